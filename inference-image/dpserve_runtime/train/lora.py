"""LoRA adapters on a frozen base model (DP-PEFT), built with ``peft``.

A retrain with ``--lora-base`` keeps the weights of an earlier artifact frozen and trains
only low-rank adapters (per adapted layer W + (alpha/r)·B·A, A: r x in, B: out x r) with
DP-SGD; the run's ε covers the new data only. The artifact written is the *merged* model
in the base's own architecture and state-dict format, so the model server never needs
peft; the adapter itself is kept next to it (``adapter/``) for provenance.

``peft`` imports ``transformers`` (seconds): it is imported lazily, on this path only, with
the Hugging Face hub switched offline (nothing here needs the hub: the base is a plain
torch module read from a local artifact).
"""

from __future__ import annotations

import copy
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from dpserve_runtime.architectures import CnnArchitecture, MlpArchitecture
from dpserve_runtime.artifact import ArtifactError, Manifest, load_manifest, load_model

ADAPTER_DIR = "adapter"
ADAPTABLE = (nn.Linear, nn.Conv2d)
_OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


class LoraError(ValueError):
    """The base artifact or the adapter configuration cannot be used."""


def _peft() -> ModuleType:
    # Set before the first import: huggingface_hub reads these once, at import time.
    os.environ.update(_OFFLINE)
    import peft

    return peft


@dataclass(frozen=True)
class LoraSpec:
    """Which layers get adapters, of what rank and scale."""

    rank: int = 8
    alpha: float | None = None  # None: 2 * rank
    targets: tuple[str, ...] | None = None  # None: every Linear / Conv2d of the base

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise LoraError(f"rank must be >= 1, got {self.rank}")
        if self.alpha is not None and not self.alpha > 0:
            raise LoraError(f"alpha must be > 0, got {self.alpha}")
        if self.targets is not None and not self.targets:
            raise LoraError("targets must name at least one module")

    @property
    def scale_alpha(self) -> float:
        return float(self.alpha) if self.alpha is not None else 2.0 * self.rank


@dataclass(frozen=True)
class LoraBase:
    """A state-dict artifact loaded as the frozen base of a LoRA run."""

    directory: Path
    manifest: Manifest
    architecture: MlpArchitecture | CnnArchitecture
    model: nn.Module
    weights_sha256: str

    def reference(self) -> dict[str, str]:
        """The manifest's ``lora.base`` block: which base, byte for byte."""
        return {"version": self.manifest.version, "sha256": self.weights_sha256}


def load_base(directory: str | Path) -> LoraBase:
    """Load a ``state-dict`` artifact as a base; other formats raise LoraError."""
    root = Path(directory)
    try:
        manifest = load_manifest(root)
    except ArtifactError as exc:
        raise LoraError(str(exc)) from exc
    if manifest.format != "state-dict":
        raise LoraError(
            f"{root} is a {manifest.format!r} artifact; LoRA adapts a single model in "
            "'state-dict' format (its manifest names the architecture)"
        )
    assert manifest.architecture is not None and manifest.weights is not None
    try:
        model = load_model(root)
    except ArtifactError as exc:
        raise LoraError(str(exc)) from exc
    assert isinstance(model, nn.Module)
    # Hash the file the manifest names: the same bytes the loader just read.
    with (root / manifest.weights).open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    return LoraBase(
        directory=root,
        manifest=manifest,
        architecture=manifest.architecture,
        model=model,
        weights_sha256=digest,
    )


def adaptable_modules(model: nn.Module) -> list[str]:
    """Names of the layers LoRA can adapt here (Linear, Conv2d), in module order."""
    return [name for name, module in model.named_modules() if isinstance(module, ADAPTABLE)]


def resolve_targets(model: nn.Module, spec: LoraSpec) -> list[str]:
    """The exact module names to adapt; unknown or non-adaptable names raise LoraError."""
    candidates = adaptable_modules(model)
    if spec.targets is None:
        if not candidates:
            raise LoraError("the base has no Linear or Conv2d layer to adapt")
        return candidates
    unknown = [name for name in spec.targets if name not in candidates]
    if unknown:
        raise LoraError(
            f"{', '.join(repr(n) for n in unknown)} is not a Linear or Conv2d layer of the "
            f"base; adaptable layers: {', '.join(candidates)}"
        )
    return list(dict.fromkeys(spec.targets))


def build_lora_model(base: nn.Module, spec: LoraSpec, *, seed: int = 0) -> nn.Module:
    """A peft model of ``base`` (deep-copied) with adapters on the targets; only they train.

    ``seed`` fixes the adapters' initialisation (A random, B zero, so the model starts out
    as the base) without reseeding torch's global generator, which DP-SGD's noise uses.
    """
    peft = _peft()
    targets = resolve_targets(base, spec)
    config = peft.LoraConfig(
        r=spec.rank,
        lora_alpha=spec.scale_alpha,
        target_modules=targets,
        lora_dropout=0.0,
        bias="none",  # biases, norms and everything not adapted stay frozen
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model: nn.Module = peft.get_peft_model(copy.deepcopy(base), config)
    # peft matches a target by name suffix; require that exactly the named layers got one.
    adapted = adapter_targets(model)
    if set(adapted) != set(targets):
        raise LoraError(f"peft adapted {adapted}, expected exactly {targets}")
    wrong = [n for n, p in model.named_parameters() if p.requires_grad and ".lora_" not in n]
    if wrong:
        raise LoraError(f"base parameters left trainable: {wrong}")
    return model


def adapter_targets(model: nn.Module) -> list[str]:
    """The target module names of a peft model's adapter (in module order)."""
    peft = _peft()
    return [
        name.removeprefix("base_model.model.")
        for name, module in model.named_modules()
        if isinstance(module, peft.tuners.lora.LoraLayer)
    ]


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters of a peft model, base included in the total."""
    counts = getattr(model, "get_nb_trainable_parameters", None)
    if not callable(counts):
        raise LoraError(f"{type(model).__name__} is not a peft model")
    trainable, total = counts()
    return int(trainable), int(total)


def merged(model: nn.Module) -> nn.Module:
    """The base architecture with the adapters folded into its weights (W + alpha/r·B·A).

    Works on a copy: ``model`` keeps its separate adapters.
    """
    merge = getattr(copy.deepcopy(model), "merge_and_unload", None)
    if not callable(merge):
        raise LoraError(f"{type(model).__name__} is not a peft model")
    result = merge(safe_merge=True)  # safe_merge: refuse NaN/inf instead of writing them
    if not isinstance(result, nn.Module):
        raise LoraError(f"merge returned {type(result).__name__}, not a module")
    return result.eval()


def save_adapter(model: nn.Module, directory: str | Path, *, description: str) -> Path:
    """Write the adapter alone (``adapter_config.json``, ``adapter_model.safetensors``)
    with peft's own format, plus a short ``README.md`` saying where it comes from."""
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    # peft adds its metadata to an existing model card instead of writing its template
    # (the card needs a metadata block, or huggingface_hub logs a warning).
    card = f"---\nlibrary_name: peft\n---\n\n{description.rstrip()}\n"
    (target / "README.md").write_text(card, encoding="utf-8")
    save = getattr(model, "save_pretrained", None)
    if not callable(save):
        raise LoraError(f"{type(model).__name__} is not a peft model")
    save(str(target), safe_serialization=True)
    return target


def load_adapter(base: nn.Module, directory: str | Path) -> nn.Module:
    """``base`` (deep-copied) with the adapter saved in ``directory`` applied (not merged)."""
    peft = _peft()
    model: nn.Module = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(directory))
    return model.eval()


def summary(
    model: nn.Module, spec: LoraSpec, base: LoraBase, *, adapter: str = ADAPTER_DIR
) -> dict[str, Any]:
    """The ``lora`` block of the manifest's training section and of the report."""
    trainable, total = parameter_counts(model)
    return {
        "rank": spec.rank,
        "alpha": spec.scale_alpha,
        "targets": adapter_targets(model),
        "trainableParams": trainable,
        "totalParams": total,
        "base": base.reference(),
        "adapter": adapter,
    }


def parse_targets(text: str | None) -> tuple[str, ...] | None:
    """``"1,3"`` -> ("1", "3"); None or blank -> None (every adaptable layer)."""
    if text is None or not text.strip():
        return None
    names = tuple(part.strip() for part in text.split(","))
    if any(not n for n in names):
        raise LoraError(f"empty module name in {text!r}")
    return names

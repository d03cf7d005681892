"""Model artifact directories: ``manifest.json`` plus weights (written by the trainer,
read by the model server).

Layout (camelCase keys, see the shared contract)::

    <dir>/manifest.json      {"format", "version", "architecture", "weights" | "teachers",
                              "labels"?, "training"?, "fingerprints"?}
    <dir>/weights.pt         state-dict format: torch state dict of ``build_model(architecture)``
    <dir>/model.ts           torchscript format: a scripted module (architecture optional)
    <dir>/teachers/000.pt    pate-ensemble format: one state dict per teacher
    <dir>/training-set.json  the record ids each teacher (or the model) was trained on, when
                             the data set carried ids (``train/recordids.py``): the PATE
                             partition map an erasure retrains the affected teachers from
    <dir>/adapter/           state-dict made by a LoRA run: the unmerged adapter (peft's
                             format), provenance only; ``weights.pt`` holds the merged model

Weights are loaded with ``torch.load(weights_only=True)`` (no pickle code execution), and
every path in the manifest must stay inside the artifact directory. The manifest is
written last and atomically, so a directory with a manifest is complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal, TypeVar

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel
from torch import nn

from dpserve_runtime.architectures import Architecture as ArchitectureField
from dpserve_runtime.architectures import (
    CnnArchitecture,
    MlpArchitecture,
    build_model,
    parse_architecture,
)

ModelT = TypeVar("ModelT", bound=BaseModel)
MANIFEST_NAME = "manifest.json"
WEIGHTS_NAME = "weights.pt"
TORCHSCRIPT_NAME = "model.ts"
TEACHERS_DIR = "teachers"

ArtifactFormat = Literal["state-dict", "torchscript", "pate-ensemble"]
ArchitectureLike = dict[str, Any] | MlpArchitecture | CnnArchitecture


class ArtifactError(ValueError):
    """The artifact directory is missing, malformed or does not match its manifest."""


class _Wire(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


def _relative_path(value: str) -> str:
    # Manifest paths are relative POSIX paths inside the artifact directory: no escape
    # via "..", absolute paths or backslashes (the artifact may come from a user's bucket).
    path = PurePosixPath(value)
    if not value or "\\" in value or path.is_absolute() or ".." in path.parts:
        raise ValueError(f"must be a relative path inside the artifact directory, got {value!r}")
    return value


class LoraBaseRef(_Wire):
    """The frozen base of a LoRA run: its version and the SHA-256 of its weights file."""

    version: Annotated[str, Field(min_length=1, max_length=63)]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class LoraProvenance(_Wire):
    """How a merged LoRA model was made (the weights file holds the merged model)."""

    rank: Annotated[int, Field(ge=1)]
    alpha: Annotated[float, Field(gt=0)]
    targets: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=256)]],
        Field(min_length=1, max_length=1024),
    ]
    trainable_params: Annotated[int, Field(ge=1)]
    total_params: Annotated[int, Field(ge=1)]
    base: LoraBaseRef
    adapter: str | None = None  # directory of the unmerged adapter (peft format)

    @field_validator("adapter")
    @classmethod
    def _inside(cls, value: str | None) -> str | None:
        return None if value is None else _relative_path(value)


class TrainingSpend(_Wire):
    """The DP-SGD spend declared by the trainer for this artifact (floats: a file, not a CR)."""

    noise_multiplier: Annotated[float, Field(ge=0)] | None = None
    sample_rate: Annotated[float, Field(gt=0, le=1)] | None = None
    steps: Annotated[int, Field(ge=0)] | None = None
    # The subsampled-Gaussian bound assumes Poisson sampling; anything else is recorded as
    # such so that the accountant can refuse to treat it as Poisson.
    sampling: Literal["poisson", "shuffle"] = "poisson"
    epsilon: Annotated[float, Field(ge=0)] | None = None
    delta: Annotated[float, Field(ge=0, lt=1)] | None = None
    accountant: Literal["rdp", "pld"] = "rdp"
    teachers: Annotated[int, Field(ge=1)] | None = None
    accuracy: Annotated[float, Field(ge=0, le=1)] | None = None
    # Set when only LoRA adapters on a frozen base were trained (the spend is theirs).
    lora: LoraProvenance | None = None


class Recipe(_Wire):
    """How the teachers of a pate-ensemble were trained: teacher k is rebuilt from
    ``seed + k`` with these settings, so an erasure retrains exactly what a run without
    the erased records would have trained."""

    epochs: Annotated[int, Field(ge=1)]
    batch_size: Annotated[int, Field(ge=1)]
    learning_rate: Annotated[float, Field(gt=0)]
    seed: int
    test_fraction: Annotated[float, Field(ge=0, lt=1)]


class Manifest(_Wire):
    """``manifest.json`` of an artifact directory."""

    format: ArtifactFormat
    version: Annotated[str, Field(min_length=1, max_length=63)] = "v1"
    architecture: ArchitectureField | None = None
    weights: str | None = None
    teachers: Annotated[list[str], Field(max_length=10000)] | None = None
    labels: (
        Annotated[list[Annotated[str, Field(max_length=4096)]], Field(max_length=100_000)] | None
    ) = None
    training: TrainingSpend | None = None
    fingerprints: str | None = None
    training_set: str | None = None  # training-set.json: record ids per teacher / model
    recipe: Recipe | None = None  # pate-ensemble: how each teacher was trained

    @field_validator("weights", "fingerprints", "training_set")
    @classmethod
    def _inside(cls, value: str | None) -> str | None:
        return None if value is None else _relative_path(value)

    @field_validator("teachers")
    @classmethod
    def _teachers_inside(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else [_relative_path(v) for v in value]

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if self.format in ("state-dict", "pate-ensemble") and self.architecture is None:
            raise ValueError(f"architecture: required for format {self.format!r}")
        if self.format in ("state-dict", "torchscript") and self.weights is None:
            raise ValueError(f"weights: required for format {self.format!r}")
        if self.format == "pate-ensemble":
            if not self.teachers or len(self.teachers) < 2:
                raise ValueError("teachers: a pate-ensemble needs at least 2 teacher files")
        elif self.teachers is not None:
            raise ValueError(
                f"teachers: only valid for format 'pate-ensemble', not {self.format!r}"
            )
        if (
            self.labels is not None
            and self.architecture is not None
            and len(self.labels) != self.architecture.num_classes
        ):
            raise ValueError(
                f"labels: {len(self.labels)} labels for {self.architecture.num_classes} classes"
            )
        return self

    def wire(self) -> dict[str, Any]:
        """The manifest as written to ``manifest.json``."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def load_manifest(directory: str | Path) -> Manifest:
    """Read and validate ``<directory>/manifest.json`` (ArtifactError naming the field)."""
    return load_manifest_as(directory, Manifest)


def load_manifest_as(directory: str | Path, model: type[ModelT]) -> ModelT:
    """``<directory>/manifest.json`` validated as ``model`` (the tensor formats' Manifest or
    the huggingface format's); ArtifactError naming the file and the field."""
    path = Path(directory) / MANIFEST_NAME
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ArtifactError(f"no {MANIFEST_NAME} in artifact directory {directory}") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: unreadable manifest: {exc}") from exc
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ArtifactError(f"{path}: invalid manifest: {describe(exc)}") from exc


def describe(exc: ValidationError) -> str:
    """A pydantic error as ``field.path: message; ...``."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()
    )


def _resolve(directory: Path, relative: str) -> Path:
    path = (directory / relative).resolve()
    # Symlinks could still point outside; refuse them too.
    if not path.is_relative_to(directory.resolve()):
        raise ArtifactError(f"{relative!r} resolves outside the artifact directory")
    if not path.is_file():
        raise ArtifactError(f"{relative!r} named in the manifest does not exist in {directory}")
    return path


def _load_state_dict(
    directory: Path, relative: str, architecture: MlpArchitecture | CnnArchitecture
) -> nn.Module:
    path = _resolve(directory, relative)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt/unsafe files
        raise ArtifactError(f"{relative}: cannot load state dict: {exc}") from exc
    if not isinstance(state, Mapping):
        raise ArtifactError(f"{relative}: expected a state dict, got {type(state).__name__}")
    model = build_model(architecture)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ArtifactError(f"{relative}: does not match the manifest architecture: {exc}") from exc
    return model.eval()


def teacher_files(directory: str | Path, manifest: Manifest) -> list[Path]:
    """The teacher files of a pate-ensemble, checked to lie inside the directory."""
    if manifest.format != "pate-ensemble" or manifest.teachers is None:
        raise ArtifactError(f"{directory}: not a pate-ensemble artifact")
    return [_resolve(Path(directory), t) for t in manifest.teachers]


def load_model(directory: str | Path) -> nn.Module | list[nn.Module]:
    """The artifact's model in eval mode: one module, or the list of teachers of a
    pate-ensemble (in manifest order)."""
    root = Path(directory)
    manifest = load_manifest(root)
    if manifest.format == "pate-ensemble":
        assert manifest.architecture is not None and manifest.teachers is not None
        return [_load_state_dict(root, t, manifest.architecture) for t in manifest.teachers]
    assert manifest.weights is not None
    if manifest.format == "state-dict":
        assert manifest.architecture is not None
        return _load_state_dict(root, manifest.weights, manifest.architecture)
    path = _resolve(root, manifest.weights)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated
            scripted: nn.Module = torch.jit.load(  # type: ignore[no-untyped-call]
                str(path), map_location="cpu"
            )
    except Exception as exc:
        raise ArtifactError(f"{manifest.weights}: cannot load TorchScript module: {exc}") from exc
    return scripted.eval()


# ---------------------------------------------------------------------------- writing


def _standard_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    # Opacus' GradSampleModule prefixes every key with "_module."; store the plain module's.
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    prefix = "_module."
    if state and all(k.startswith(prefix) for k in state):
        state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _save_state_dict(
    model: nn.Module, architecture: MlpArchitecture | CnnArchitecture, path: Path
) -> None:
    state = _standard_state_dict(model)
    try:  # fail at write time, not when the server starts
        build_model(architecture).load_state_dict(state, strict=True)
    except RuntimeError as exc:
        wire = architecture.model_dump(by_alias=True)
        raise ArtifactError(f"model does not match architecture {wire}: {exc}") from exc
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)


def _write_manifest(directory: Path, manifest: Manifest) -> None:
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".manifest-", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(manifest.wire(), handle, indent=2)
        handle.write("\n")
    os.chmod(tmp, 0o644)  # mkstemp makes it 0600; the server may run as another uid
    os.replace(tmp, directory / MANIFEST_NAME)


def _training(training: TrainingSpend | Mapping[str, Any] | None) -> TrainingSpend | None:
    if training is None or isinstance(training, TrainingSpend):
        return training
    return TrainingSpend.model_validate(dict(training))


def _new_manifest(
    directory: str | Path,
    format: ArtifactFormat,
    architecture: MlpArchitecture | CnnArchitecture | None,
    *,
    version: str,
    labels: Sequence[str] | None,
    training: TrainingSpend | Mapping[str, Any] | None,
    fingerprints: str | None,
    **files: Any,
) -> tuple[Path, Manifest]:
    """The artifact directory (created) and the manifest every save_* writes last."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(
        format=format,
        version=version,
        architecture=architecture,
        labels=list(labels) if labels is not None else None,
        training=_training(training),
        fingerprints=fingerprints,
        **files,
    )
    return root, manifest


def save_state_dict_artifact(
    directory: str | Path,
    model: nn.Module,
    architecture: ArchitectureLike,
    *,
    version: str = "v1",
    labels: Sequence[str] | None = None,
    training: TrainingSpend | Mapping[str, Any] | None = None,
    fingerprints: str | None = None,
    training_set: str | None = None,
) -> Manifest:
    """Write a ``state-dict`` artifact (``weights.pt`` + manifest) and return its manifest."""
    arch = parse_architecture(architecture)
    root, manifest = _new_manifest(
        directory, "state-dict", arch, version=version, labels=labels, training=training,
        fingerprints=fingerprints, weights=WEIGHTS_NAME, training_set=training_set,
    )
    _save_state_dict(model, arch, root / WEIGHTS_NAME)
    _write_manifest(root, manifest)
    return manifest


def save_pate_ensemble(
    directory: str | Path,
    teachers: Sequence[nn.Module | Path],
    architecture: ArchitectureLike,
    *,
    version: str = "v1",
    labels: Sequence[str] | None = None,
    training: TrainingSpend | Mapping[str, Any] | None = None,
    fingerprints: str | None = None,
    training_set: str | None = None,
    recipe: Recipe | None = None,
) -> Manifest:
    """Write a ``pate-ensemble`` artifact (``teachers/NNN.pt`` + manifest): the teachers
    must have been trained on disjoint partitions of the protected data.

    A teacher given as a Path (a teacher file of an earlier version that an erasure did not
    touch) is copied byte for byte: what did not see an erased record stays exactly as it was.
    """
    arch = parse_architecture(architecture)
    width = max(3, len(str(len(teachers) - 1)))
    files = [f"{TEACHERS_DIR}/{i:0{width}d}.pt" for i in range(len(teachers))]
    root, manifest = _new_manifest(
        directory, "pate-ensemble", arch, version=version, labels=labels, training=training,
        fingerprints=fingerprints, teachers=files, training_set=training_set, recipe=recipe,
    )
    for teacher, name in zip(teachers, files, strict=True):
        if isinstance(teacher, Path):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(teacher, root / name)
        else:
            _save_state_dict(teacher, arch, root / name)
    _write_manifest(root, manifest)
    return manifest


def save_torchscript_artifact(
    directory: str | Path,
    model: nn.Module,
    *,
    example_input: torch.Tensor | None = None,
    architecture: ArchitectureLike | None = None,
    version: str = "v1",
    labels: Sequence[str] | None = None,
    training: TrainingSpend | Mapping[str, Any] | None = None,
    fingerprints: str | None = None,
) -> Manifest:
    """Write a ``torchscript`` artifact (``model.ts`` + manifest). ``model`` may already be
    scripted; otherwise it is scripted, or traced on ``example_input`` if scripting fails.
    ``architecture`` is optional; when given, the server checks input sizes against it."""
    arch = parse_architecture(architecture) if architecture is not None else None
    root, manifest = _new_manifest(
        directory, "torchscript", arch, version=version, labels=labels, training=training,
        fingerprints=fingerprints, weights=TORCHSCRIPT_NAME,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated
        scripted: torch.jit.ScriptModule
        if isinstance(model, torch.jit.ScriptModule):
            scripted = model
        else:
            model = model.eval()
            try:
                scripted = torch.jit.script(model)
            except Exception:
                if example_input is None:
                    raise
                scripted = torch.jit.trace(model, example_input)  # type: ignore[no-untyped-call]
        torch.jit.save(scripted, str(root / TORCHSCRIPT_NAME))
    _write_manifest(root, manifest)
    return manifest

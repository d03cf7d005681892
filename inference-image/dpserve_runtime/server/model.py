"""The loaded artifact as the server sees it: one model or an ensemble, run in inference mode."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dpserve_runtime.architectures import input_size
from dpserve_runtime.artifact import ArtifactError, Manifest, load_manifest, load_model


class ModelOutputError(RuntimeError):
    """The model produced something the mechanisms cannot release (wrong shape, NaN, ...)."""


@dataclass(frozen=True)
class ServedModel:
    """An artifact's members (one module, or the teachers of a pate-ensemble) and metadata."""

    manifest: Manifest
    members: tuple[nn.Module, ...]

    @classmethod
    def load(cls, directory: str | Path) -> ServedModel:
        manifest = load_manifest(directory)
        loaded = load_model(directory)
        members = tuple(loaded) if isinstance(loaded, list) else (loaded,)
        for member in members:
            member.eval()
        return cls(manifest, members)

    @property
    def is_ensemble(self) -> bool:
        return self.manifest.format == "pate-ensemble"

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def format(self) -> str:
        return self.manifest.format

    @property
    def member_count(self) -> int:
        return len(self.members)

    @property
    def output_diameter(self) -> float:
        """The mechanisms see softmax probabilities: two lie at most √2 apart in L2."""
        return math.sqrt(2.0)

    @property
    def input_size(self) -> int | None:
        """Floats per input; None for a TorchScript artifact without architecture."""
        arch = self.manifest.architecture
        return None if arch is None else input_size(arch)

    @property
    def num_outputs(self) -> int | None:
        """Width of one member's output; None when the manifest does not say."""
        arch = self.manifest.architecture
        return None if arch is None else arch.num_classes

    def label_text(self, label: int) -> str | None:
        labels = self.manifest.labels
        return labels[label] if labels is not None and 0 <= label < len(labels) else None

    def outputs(self, x: torch.Tensor) -> torch.Tensor:
        """Raw outputs of every member, ``[members, n, outputs]`` (float64, finite)."""
        with torch.inference_mode():
            per_member = [member(x) for member in self.members]
        for out in per_member:
            if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0]:
                shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ModelOutputError(f"model returned {shape} for {x.shape[0]} inputs")
        stacked = torch.stack(per_member).to(torch.float64)
        expected = self.num_outputs
        if expected is not None and stacked.shape[2] != expected:
            raise ModelOutputError(f"model returned {stacked.shape[2]} outputs, not {expected}")
        if not torch.isfinite(stacked).all():
            raise ModelOutputError("model returned NaN or infinite values")
        return stacked


__all__ = ["ArtifactError", "ModelOutputError", "ServedModel"]

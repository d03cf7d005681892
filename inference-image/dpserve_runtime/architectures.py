"""Model architectures an artifact may name, and the torch modules built from them.

Both are Opacus-compatible (every layer has a per-sample-gradient rule; GroupNorm instead
of BatchNorm, whose batch statistics mix samples and break DP-SGD), so the trainer and
the model server build the same module from the same manifest entry.

Wire form (camelCase, part of ``manifest.json``)::

    {"type": "mlp", "inputDim": 64, "hiddenDims": [128], "numClasses": 10}
    {"type": "cnn", "inputShape": [1, 8, 8], "channels": [16, 32], "numClasses": 10}

Both modules accept inputs either flat, ``[n, input_size]``, or (cnn) already shaped,
``[n, c, h, w]``; they return logits ``[n, numClasses]``.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from pydantic.alias_generators import to_camel
from torch import nn

Width = Annotated[int, Field(ge=1, le=65536)]


class _Wire(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class MlpArchitecture(_Wire):
    """Fully connected network: Flatten, Linear -> ReLU per hidden layer, a Linear head."""

    type: Literal["mlp"] = "mlp"
    input_dim: Annotated[int, Field(ge=1, le=1_000_000)]
    hidden_dims: Annotated[list[Width], Field(max_length=16)] = []
    num_classes: Annotated[int, Field(ge=2, le=100_000)]


class CnnArchitecture(_Wire):
    """Small convnet: (Conv3x3 -> GroupNorm -> ReLU -> MaxPool2) per channel entry,
    global average pool, Linear head. Pooling stops once the feature map is 1x1."""

    type: Literal["cnn"] = "cnn"
    input_shape: tuple[Width, Width, Width]
    channels: Annotated[
        list[Annotated[int, Field(ge=2, le=65536)]], Field(min_length=1, max_length=8)
    ]
    num_classes: Annotated[int, Field(ge=2, le=100_000)]


Architecture = Annotated[MlpArchitecture | CnnArchitecture, Field(discriminator="type")]
_ARCHITECTURE: TypeAdapter[MlpArchitecture | CnnArchitecture] = TypeAdapter(Architecture)


def parse_architecture(
    value: dict[str, Any] | MlpArchitecture | CnnArchitecture,
) -> MlpArchitecture | CnnArchitecture:
    """Validate a wire-form architecture (raises pydantic.ValidationError naming the field)."""
    if isinstance(value, MlpArchitecture | CnnArchitecture):
        return value
    return _ARCHITECTURE.validate_python(value)


def input_size(architecture: MlpArchitecture | CnnArchitecture) -> int:
    """Number of floats in one flat input vector."""
    if isinstance(architecture, MlpArchitecture):
        return architecture.input_dim
    return math.prod(architecture.input_shape)


def _groups(channels: int) -> int:
    # Largest group count <= 8 that divides the channels and leaves >= 2 channels per group
    # (GroupNorm needs a divisor, and more than one value per group on a 1x1 feature map).
    return max(
        g for g in range(1, min(8, channels) + 1) if channels % g == 0 and channels // g >= 2
    )


class ConvNet(nn.Module):
    """The ``cnn`` architecture; reshapes flat inputs to ``input_shape`` first."""

    def __init__(self, architecture: CnnArchitecture) -> None:
        super().__init__()
        self.input_shape = tuple(architecture.input_shape)
        layers: list[nn.Module] = []
        in_channels, height, width = architecture.input_shape
        for out_channels in architecture.channels:
            layers += [
                nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
                nn.GroupNorm(_groups(out_channels), out_channels),
                nn.ReLU(),
            ]
            if height >= 2 and width >= 2:
                layers.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(in_channels, architecture.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, h, w = self.input_shape
        x = x.reshape(-1, c, h, w)
        logits: torch.Tensor = self.head(torch.flatten(self.pool(self.features(x)), 1))
        return logits


def build_model(
    architecture: dict[str, Any] | MlpArchitecture | CnnArchitecture,
    *,
    seed: int | None = None,
) -> nn.Module:
    """A freshly initialised module for ``architecture`` (wire dict or parsed model).

    ``seed`` makes the initial weights reproducible without reseeding torch's global
    generator: Opacus draws Poisson batches and DP noise from it, and those must stay
    unpredictable.
    """
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build_model(architecture)
    arch = parse_architecture(architecture)
    if isinstance(arch, CnnArchitecture):
        return ConvNet(arch)
    # Flatten first so [n, c, h, w] data sets also fit an mlp.
    layers: list[nn.Module] = [nn.Flatten()]
    width = arch.input_dim
    for hidden in arch.hidden_dims:
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, arch.num_classes))
    return nn.Sequential(*layers)

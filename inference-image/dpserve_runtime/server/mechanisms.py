"""The DP output mechanisms the model server applies, one class per ``spec.serving.mechanism``
type (``dpserve.api.mechanism.Mechanism``).

Each turns a batch of inputs into one JSON-ready output per input and says how many DP
releases (``queries``) that cost, which the sidecar charges against its lease. What the
ledger charges per query, and what the noise below is calibrated against:

- ``none``       0 queries; the model is DP-trained, answers are post-processing.
                 Output ``{"label", "probabilities", "text"?}``.
- ``pate``       GNMax. Each teacher votes its arg-max; the histogram gets discrete Gaussian
                 noise of std ``noiseMultiplier`` (votes), L2 sensitivity √2 (one teacher
                 moves one vote), zCDP ρ = 1/σ² per query (RDP α/σ²). Output ``{"label",
                 "text"?}``: the noisy histogram itself is not released.
- ``gaussian``   Each member's softmax is clipped to L2 ≤ ``clipNorm`` and the members are
                 averaged, then N(0, (noiseMultiplier·clipNorm)²) per coordinate is added.
                 One record changes one member (disjoint partitions), so the provable L2
                 sensitivity is min(2·clipNorm, √2)/K (√2: any two probability vectors;
                 projection on the ball is non-expansive). ``sensitivity`` must be stated
                 in the spec and at least that bound; ρ = sensitivity²/(2(σ·C)²) per query.
                 Output ``{"vector", "label", "text"?}`` (label = arg-max of the noisy vector).
- ``laplace-embedding``  The model's raw output (embedding) clipped to L1 ≤ 1, plus Laplace
                 noise of scale 2/``epsilon`` (L1 sensitivity 2 between any two clipped
                 vectors), so ``epsilon``-DP per query for the query's own content.
                 Output ``{"embedding", "label", "text"?}``.

Noise comes from :mod:`dpserve_runtime.noise` (OpenDP, exact samplers, CSPRNG) only.

Sentence embeddings (huggingface feature-extraction, :mod:`dpserve_runtime.server.textmodels`)
use the same classes through ``release_vectors``: the encoder's pooled, L2-normalised vector
is the one member output (``none``: released as is; ``gaussian``: clipped to ``clipNorm``, the
provable sensitivity then being 2·min(clipNorm, 1), since two unit vectors lie up to 2 apart;
``laplace-embedding``: clipped to L1 ≤ 1, Laplace noise as above).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Protocol, TypeVar

import numpy as np
import numpy.typing as npt
import torch

from dpserve.api.mechanism import Mechanism
from dpserve_runtime.noise import (
    DiscreteGaussianVotes,
    GaussianVector,
    LaplaceVector,
    discrete_gaussian_votes,
    gaussian_vector,
    laplace_vector,
)
from dpserve_runtime.postprocess import argmax_uniform_ties
from dpserve_runtime.server.model import ServedModel

Output = dict[str, Any]
# Clip slightly inside the ball so float rounding of the rescaled vector cannot leave it.
_CLIP_SHRINK = 1.0 - 2.0**-40
# Relative slack when comparing a stated sensitivity with the computed bound (float noise).
_BOUND_TOLERANCE = 1e-12
LAPLACE_L1_SENSITIVITY = 2.0
# Largest L2 distance between two softmax probability vectors.
PROBABILITY_DIAMETER = math.sqrt(2.0)
FloatArray = npt.NDArray[np.float64]


class MechanismTarget(Protocol):
    """What a mechanism is calibrated against: a tensor artifact (:class:`ServedModel`) or
    a sentence encoder (``textmodels.SentenceEncoder``)."""

    @property
    def is_ensemble(self) -> bool: ...

    @property
    def member_count(self) -> int: ...

    @property
    def num_outputs(self) -> int | None: ...

    @property
    def format(self) -> str: ...

    @property
    def output_diameter(self) -> float:
        """Largest L2 distance between two member outputs as the mechanism receives them
        (√2 for probability vectors, 2 for unit vectors)."""
        ...


class MechanismConfigError(ValueError):
    """The mechanism spec is invalid or does not fit the artifact (message names the field)."""


def _positive(spec: Mechanism, field: str, alias: str) -> float:
    raw = getattr(spec, field)
    if raw is None:
        raise MechanismConfigError(f"mechanism.{alias}: required for type {spec.type!r}")
    value = float(raw)
    if not (math.isfinite(value) and value > 0):
        raise MechanismConfigError(f"mechanism.{alias}: must be a finite number > 0, got {raw!r}")
    return value


def _only(spec: Mechanism, allowed: set[str]) -> None:
    # Parameters of another type signal a misconfigured spec (e.g. noise meant, none typed).
    present = {k for k, v in spec.model_dump(by_alias=True).items() if v is not None}
    extra = sorted(present - allowed - {"type"})
    if extra:
        raise MechanismConfigError(
            f"mechanism.{extra[0]}: not a parameter of type {spec.type!r} "
            f"(allowed: {sorted(allowed) or 'none'})"
        )


def _clip_rows(vectors: npt.NDArray[np.float64], bound: float, ord: int) -> npt.NDArray[np.float64]:
    """Scale each row (last axis) down to norm <= bound (L1 or L2)."""
    norms = np.linalg.norm(vectors, ord=ord, axis=-1, keepdims=True)
    factor = np.minimum(1.0, bound * _CLIP_SHRINK / np.maximum(norms, np.finfo(np.float64).tiny))
    clipped: npt.NDArray[np.float64] = vectors * factor
    return clipped


def _served(model: MechanismTarget) -> ServedModel:
    # release(x) runs a tensor artifact; a sentence encoder goes through release_vectors.
    if not isinstance(model, ServedModel):
        raise TypeError(f"release() needs a tensor artifact, got {type(model).__name__}")
    return model


def _label_output(model: ServedModel, label: int) -> Output:
    out: Output = {"label": label}
    text = model.label_text(label)
    if text is not None:
        out["text"] = text
    return out


MECHANISMS: dict[str, type[OutputMechanism]] = {}
MechanismClass = TypeVar("MechanismClass", bound="type[OutputMechanism]")


def register(cls: MechanismClass) -> MechanismClass:
    """Class decorator: serve ``spec.serving.mechanism.type == cls.type`` with ``cls``.

    The one registry of the server's mechanisms: a new mechanism is one decorated class
    here (its accounting is its event class in ``dpserve.accounting.events``).
    """
    known = MECHANISMS.get(cls.type)
    if known is not None and known is not cls:
        raise TypeError(
            f"mechanism type {cls.type!r} is served by {known.__name__} already, "
            f"not also by {cls.__name__}"
        )
    MECHANISMS[cls.type] = cls
    return cls


class OutputMechanism(ABC):
    """Applies one mechanism type to model outputs."""

    type: ClassVar[str]

    def __init__(self, spec: Mechanism, model: MechanismTarget) -> None:
        self.spec = spec
        self.model = model

    @abstractmethod
    def release(self, x: torch.Tensor) -> list[Output]:
        """One output per input row of ``x`` (``[n, input_size]``), noise applied."""

    def release_vectors(self, vectors: FloatArray) -> FloatArray:
        """The vectors released for member outputs ``[members, n, dim]``: ``[n, dim]``."""
        raise MechanismConfigError(
            f"mechanism.type: {self.type!r} does not release vectors (use none, gaussian or "
            "laplace-embedding)"
        )

    def queries(self, answered: int) -> int:
        """DP releases charged for ``answered`` outputs: one each unless free."""
        return answered

    def noise(self) -> dict[str, Any] | None:
        """The noise actually applied (scale used, grid, OpenDP's per-query loss)."""
        return None


@register
class NoMechanism(OutputMechanism):
    type = "none"

    def __init__(self, spec: Mechanism, model: MechanismTarget) -> None:
        super().__init__(spec, model)
        _only(spec, set())
        if model.is_ensemble:
            raise MechanismConfigError(
                "mechanism.type: 'none' serves one DP-trained model; a pate-ensemble's "
                "teachers are not DP-trained (use type 'pate' or 'gaussian')"
            )

    def release(self, x: torch.Tensor) -> list[Output]:
        model = _served(self.model)
        probs = torch.softmax(model.outputs(x)[0], dim=-1).numpy()
        outputs = []
        for row in probs:
            out = _label_output(model, int(np.argmax(row)))
            out["probabilities"] = row.tolist()
            outputs.append(out)
        return outputs

    def release_vectors(self, vectors: FloatArray) -> FloatArray:
        released: FloatArray = np.asarray(vectors[0], dtype=np.float64)
        return released

    def queries(self, answered: int) -> int:
        return 0


@register
class PateMechanism(OutputMechanism):
    type = "pate"

    def __init__(self, spec: Mechanism, model: MechanismTarget) -> None:
        super().__init__(spec, model)
        _only(spec, {"teachers", "noiseMultiplier"})
        if spec.teachers is None:
            raise MechanismConfigError("mechanism.teachers: required for type 'pate'")
        sigma = _positive(spec, "noise_multiplier", "noiseMultiplier")
        if not model.is_ensemble:
            raise MechanismConfigError(
                f"mechanism.type: 'pate' needs a pate-ensemble artifact, got format "
                f"{model.format!r}"
            )
        if model.member_count != spec.teachers:
            raise MechanismConfigError(
                f"mechanism.teachers: spec says {spec.teachers} teachers, the artifact has "
                f"{model.member_count}"
            )
        classes = model.num_outputs
        assert classes is not None  # pate-ensemble manifests always carry an architecture
        self.sampler: DiscreteGaussianVotes = discrete_gaussian_votes(classes, sigma)

    def release(self, x: torch.Tensor) -> list[Output]:
        model = _served(self.model)
        votes = model.outputs(x).argmax(dim=-1).numpy()  # [teachers, n]
        classes = self.sampler.num_classes
        outputs = []
        for column in votes.T:
            histogram = np.bincount(column, minlength=classes)
            noisy = self.sampler(histogram)
            outputs.append(_label_output(model, argmax_uniform_ties(noisy)))
        return outputs

    def noise(self) -> dict[str, Any]:
        return self.sampler.describe()


@register
class GaussianMechanism(OutputMechanism):
    type = "gaussian"

    def __init__(self, spec: Mechanism, model: MechanismTarget) -> None:
        super().__init__(spec, model)
        _only(spec, {"teachers", "noiseMultiplier", "clipNorm", "sensitivity"})
        multiplier = _positive(spec, "noise_multiplier", "noiseMultiplier")
        self.clip_norm = _positive(spec, "clip_norm", "clipNorm")
        self.sensitivity = _positive(spec, "sensitivity", "sensitivity")
        members = model.member_count
        if spec.teachers is not None and spec.teachers != members:
            raise MechanismConfigError(
                f"mechanism.teachers: spec says {spec.teachers}, the artifact has {members} "
                "member model(s)"
            )
        diameter = model.output_diameter
        bound = min(2.0 * self.clip_norm, diameter) / members
        if self.sensitivity < bound * (1.0 - _BOUND_TOLERANCE):
            raise MechanismConfigError(
                f"mechanism.sensitivity: {spec.sensitivity} is below the provable L2 "
                f"sensitivity {bound:.6g} of {members} clipped member output(s) "
                f"(min(2·clipNorm, {diameter:.6g})/{members})"
            )
        self.std = multiplier * self.clip_norm
        dim = model.num_outputs
        # Built (and its privacy map verified) now when the width is known; else lazily.
        self._sampler = None if dim is None else self._sampler_for(dim)

    def _sampler_for(self, dim: int) -> GaussianVector:
        return gaussian_vector(dim, self.std, self.sensitivity)

    def release(self, x: torch.Tensor) -> list[Output]:
        model = _served(self.model)
        probs = torch.softmax(model.outputs(x), dim=-1).numpy()  # [K, n, C]
        outputs = []
        for noisy in self.release_vectors(probs):
            out = _label_output(model, int(np.argmax(noisy)))
            out["vector"] = noisy.tolist()
            outputs.append(out)
        return outputs

    def release_vectors(self, vectors: FloatArray) -> FloatArray:
        mean = _clip_rows(vectors, self.clip_norm, ord=2).mean(axis=0)
        sampler = self._sampler or self._sampler_for(mean.shape[1])
        return np.stack([sampler(row) for row in mean])

    def noise(self) -> dict[str, Any] | None:
        return None if self._sampler is None else self._sampler.describe()


@register
class LaplaceEmbeddingMechanism(OutputMechanism):
    type = "laplace-embedding"

    def __init__(self, spec: Mechanism, model: MechanismTarget) -> None:
        super().__init__(spec, model)
        _only(spec, {"epsilon"})
        epsilon = _positive(spec, "epsilon", "epsilon")
        if model.is_ensemble:
            raise MechanismConfigError(
                "mechanism.type: 'laplace-embedding' serves one model, not a pate-ensemble"
            )
        self.scale = LAPLACE_L1_SENSITIVITY / epsilon
        dim = model.num_outputs
        self._sampler = None if dim is None else self._sampler_for(dim)

    def _sampler_for(self, dim: int) -> LaplaceVector:
        return laplace_vector(dim, self.scale, LAPLACE_L1_SENSITIVITY)

    def release(self, x: torch.Tensor) -> list[Output]:
        model = _served(self.model)
        outputs = []
        for noisy in self.release_vectors(model.outputs(x).numpy()):
            out = _label_output(model, int(np.argmax(noisy)))
            out["embedding"] = noisy.tolist()
            outputs.append(out)
        return outputs

    def release_vectors(self, vectors: FloatArray) -> FloatArray:
        embeddings = _clip_rows(np.asarray(vectors[0], dtype=np.float64), 1.0, ord=1)
        sampler = self._sampler or self._sampler_for(embeddings.shape[1])
        return np.stack([sampler(row) for row in embeddings])

    def noise(self) -> dict[str, Any] | None:
        return None if self._sampler is None else self._sampler.describe()


def build_mechanism(spec: Mechanism, model: MechanismTarget) -> OutputMechanism:
    """The mechanism for ``spec`` over ``model`` (MechanismConfigError if they do not fit)."""
    served = MECHANISMS.get(spec.type)
    if served is None:
        raise MechanismConfigError(
            f"mechanism.type: {spec.type!r} is not served here (known: {sorted(MECHANISMS)})"
        )
    return served(spec, model)

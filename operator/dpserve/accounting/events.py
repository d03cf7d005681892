"""DP events the ledger composes: what one release (or one training run) costs.

Every event is a :class:`DPEvent`: it states its own bounds as methods (its RDP curve,
its pure-DP epsilon, its exact Gaussian-DP units, its privacy-loss distribution), computed
from the pure analysis functions of ``rdp.py``, ``pld.py`` and ``sampled_gaussian.py``.
The composers (``compose.py``) and the solver (``solver.py``) only call these methods,
never ask which class an event is: a new mechanism is one class here (plus its server
class, its API model and its tests).

An event class that a serving mechanism charges names that mechanism (``mechanism``) and
builds itself from the mechanism's spec fields (``from_mechanism``): the one place where
spec fields become DP parameters.

Events are frozen, hashable dataclasses: they are cache keys of the per-event RDP
vectors and PLDs. A *spend* is ``(event, count)``: ``count`` independent repetitions
of the event (for :class:`SubsampledGaussian`, ``count`` training runs, each of
``steps`` steps).
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import ClassVar, Literal, TypeAlias, get_args

import numpy as np

from dpserve.accounting.pld import (
    PLD,
    RANK_PURE,
    RANK_SUBSAMPLED,
    Component,
    gaussian_pld,
    laplace_pld,
)
from dpserve.accounting.rdp import (
    gaussian_rdp,
    laplace_rdp,
    shuffle_units,
    without_replacement_rdp,
)
from dpserve.accounting.sampled_gaussian import poisson_subsampled_gaussian_rdp

Sampling = Literal["poisson", "without-replacement", "shuffle"]
SAMPLING_SCHEMES: tuple[str, ...] = get_args(Sampling)


def _positive_float(owner: object, field: str, value: object) -> float:
    """The field as a finite float > 0, or a ValueError naming ``Class.field``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(
            f"{type(owner).__name__}.{field} must be a number, got {type(value).__name__}"
        )
    number = float(value)
    if not math.isfinite(number) or number <= 0.0:
        raise ValueError(f"{type(owner).__name__}.{field} must be finite and > 0, got {value!r}")
    return number


def _set(owner: object, field: str, value: object) -> None:
    # Frozen dataclasses normalise their own fields (int -> float) through object.__setattr__.
    object.__setattr__(owner, field, value)


# A spec field of a mechanism by its API name (camelCase), as a float > 0; raises a
# ValueError naming the field when it is missing or not a usable number.
MechanismParameter: TypeAlias = Callable[[str], float]


class DPEvent(ABC):
    """One DP release; its bounds as methods, each a pure function of its parameters.

    ``rdp`` is required: RDP is the one bound valid for every event. The others default to
    "not available" and are used where an event provides them:

    - ``pure_epsilon``: the event is pure epsilon-DP (basic composition sums these);
    - ``gaussian_units``: the event is plain unsubsampled Gaussians (exact Gaussian DP);
    - ``pld_component``: its privacy-loss distribution; an event without one keeps a
      ledger holding it on the RDP bounds.
    """

    __slots__ = ()

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        _register(cls)

    @abstractmethod
    def rdp(self, orders: tuple[float, ...]) -> np.ndarray:
        """RDP of one occurrence at each of ``orders`` (may be cached by the caller)."""

    def pure_epsilon(self) -> float | None:
        """epsilon when one occurrence is pure epsilon-DP, else None."""
        return None

    def gaussian_units(self) -> tuple[float, float] | None:
        """(noise multiplier, repetitions) when one occurrence is plain unsubsampled
        Gaussians of that noise multiplier on unit sensitivity, else None."""
        return None

    def pld_component(self, count: int) -> Component | None:
        """``count`` occurrences as one PLD component; None when no PLD is available.

        Not asked of events with ``gaussian_units`` (those are merged into one exact
        Gaussian). Equal components (same rank, kind, params) are merged by summing
        repetitions, so two events that are the same mechanism compose once.
        """
        return None



# Every event class registers itself on definition (``__init_subclass__``): validation
# messages and the ledger's mechanism -> event mapping read these tables, never a list of
# classes. Keyed by qualified name because ``dataclass(slots=True)`` defines each class
# twice (the slotted copy replaces the first).
_EVENT_CLASSES: dict[str, type[DPEvent]] = {}
MECHANISM_EVENTS: dict[str, type[QueryEvent]] = {}


def _register(cls: type[DPEvent]) -> None:
    if inspect.isabstract(cls):
        return  # a base (QueryEvent), not an event
    name = f"{cls.__module__}.{cls.__qualname__}"
    _EVENT_CLASSES[name] = cls
    if issubclass(cls, QueryEvent):
        known = MECHANISM_EVENTS.get(cls.mechanism)
        if known is not None and f"{known.__module__}.{known.__qualname__}" != name:
            raise TypeError(
                f"mechanism {cls.mechanism!r} has two event classes: "
                f"{known.__qualname__} and {cls.__qualname__}"
            )
        MECHANISM_EVENTS[cls.mechanism] = cls


class QueryEvent(DPEvent):
    """The event of one query a serving mechanism answers, built from the model spec's fields.

    Training runs (``SubsampledGaussian``) are plain ``DPEvent``s: no query is one of them.
    """

    __slots__ = ()
    # The serving mechanism (``spec.serving.mechanism.type``) whose one query is this event.
    mechanism: ClassVar[str]

    @classmethod
    @abstractmethod
    def from_mechanism(cls, parameter: MechanismParameter) -> QueryEvent:
        """The event of one query answered by ``cls.mechanism`` with these spec fields."""


def event_types() -> tuple[type[DPEvent], ...]:
    """The event classes defined so far, in definition order."""
    return tuple(_EVENT_CLASSES.values())


@dataclass(frozen=True, slots=True)
class SubsampledGaussian(DPEvent):
    """One DP-SGD training run: ``steps`` noisy gradient steps.

    ``noise_multiplier`` is Opacus' z: noise std divided by the per-example clipping
    norm C. ``sample_rate`` is q = expected batch size / dataset size. ``sampling`` is
    how batches were drawn, and decides which bound is valid (docs/accounting.md):

    - ``poisson``: each record joins each batch independently with probability q
      (Opacus' DPDataLoader); the Poisson-subsampled Gaussian RDP bound.
    - ``without-replacement``: fixed-size batches drawn uniformly without replacement;
      dp-accounting's sampled-without-replacement bound (replace-one relation, so the
      summed clipped gradient has sensitivity 2C: noise multiplier z/2).
    - ``shuffle``: shuffled fixed-size batches; no amplification is claimed.
    """

    noise_multiplier: float
    sample_rate: float
    steps: int
    sampling: Sampling = "poisson"

    def __post_init__(self) -> None:
        _set(
            self,
            "noise_multiplier",
            _positive_float(self, "noise_multiplier", self.noise_multiplier),
        )
        rate = _positive_float(self, "sample_rate", self.sample_rate)
        if rate > 1.0:
            raise ValueError(f"SubsampledGaussian.sample_rate must be in (0, 1], got {rate!r}")
        _set(self, "sample_rate", rate)
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(
                f"SubsampledGaussian.steps must be an integer >= 1, got {self.steps!r}"
            )
        if self.sampling not in SAMPLING_SCHEMES:
            raise ValueError(
                f"SubsampledGaussian.sampling must be one of {', '.join(SAMPLING_SCHEMES)}, "
                f"got {self.sampling!r}"
            )

    def rdp(self, orders: tuple[float, ...]) -> np.ndarray:
        units = self.gaussian_units()
        if units is not None:
            noise_multiplier, repetitions = units
            return repetitions * gaussian_rdp(noise_multiplier, orders)
        if self.sampling == "poisson":
            step = poisson_subsampled_gaussian_rdp(
                self.sample_rate, self.noise_multiplier, orders
            )
            return self.steps * step
        return self.steps * without_replacement_rdp(
            self.sample_rate, self.noise_multiplier, orders
        )

    def gaussian_units(self) -> tuple[float, float] | None:
        # Full batches, and shuffled batches (no amplification claimed), are plain
        # Gaussians; Poisson and without-replacement runs with q < 1 are not.
        if self.sample_rate == 1.0:
            return self.noise_multiplier, float(self.steps)
        if self.sampling == "shuffle":
            return self.noise_multiplier, float(shuffle_units(self.steps, self.sample_rate))
        return None

    def pld_component(self, count: int) -> Component | None:
        # dp-accounting's PLD has no sampling-without-replacement mechanism.
        if self.sampling != "poisson":
            return None
        return Component(
            RANK_SUBSAMPLED,
            "poisson",
            (self.sample_rate, self.noise_multiplier),
            count * self.steps,
            partial(_subsampled_gaussian_pld, self.noise_multiplier, self.sample_rate),
        )


@dataclass(frozen=True, slots=True)
class GaussianQuery(QueryEvent):
    """One Gaussian-mechanism release: noise std / L2 sensitivity = ``noise_multiplier``.

    Serving mechanism ``gaussian``: noise std is ``noiseMultiplier * clipNorm`` and one
    privacy unit moves the output by at most ``sensitivity`` (L2), so the effective noise
    multiplier is ``noiseMultiplier * clipNorm / sensitivity``.
    """

    mechanism: ClassVar[str] = "gaussian"
    noise_multiplier: float

    def __post_init__(self) -> None:
        _set(
            self,
            "noise_multiplier",
            _positive_float(self, "noise_multiplier", self.noise_multiplier),
        )

    @classmethod
    def from_mechanism(cls, parameter: MechanismParameter) -> GaussianQuery:
        z = parameter("noiseMultiplier")
        clip = parameter("clipNorm")
        sensitivity = parameter("sensitivity")
        return cls(noise_multiplier=z * clip / sensitivity)

    def rdp(self, orders: tuple[float, ...]) -> np.ndarray:
        return gaussian_rdp(self.noise_multiplier, orders)

    def gaussian_units(self) -> tuple[float, float] | None:
        return self.noise_multiplier, 1.0


@dataclass(frozen=True, slots=True)
class GNMaxQuery(QueryEvent):
    """One PATE GNMax answer: Gaussian noise of absolute std ``sigma`` on the vote histogram.

    One record changes one teacher's vote: L2 sensitivity sqrt(2), so this is
    ``GaussianQuery(sigma / sqrt(2))``, RDP alpha / sigma^2 (Papernot et al. 2018). The
    ledger uses this data-independent bound, never the data-dependent one. Serving
    mechanism ``pate``: ``sigma`` is its ``noiseMultiplier`` (vote-noise std).
    """

    mechanism: ClassVar[str] = "pate"
    sigma: float

    def __post_init__(self) -> None:
        _set(self, "sigma", _positive_float(self, "sigma", self.sigma))

    @classmethod
    def from_mechanism(cls, parameter: MechanismParameter) -> GNMaxQuery:
        return cls(sigma=parameter("noiseMultiplier"))

    def rdp(self, orders: tuple[float, ...]) -> np.ndarray:
        return gaussian_rdp(self.noise_multiplier, orders)

    def gaussian_units(self) -> tuple[float, float] | None:
        return self.noise_multiplier, 1.0

    @property
    def noise_multiplier(self) -> float:
        """The equivalent Gaussian noise multiplier (std / L2 sensitivity)."""
        return self.sigma / math.sqrt(2.0)


@dataclass(frozen=True, slots=True)
class LaplaceQuery(QueryEvent):
    """One pure ``epsilon``-DP release (Laplace noise of scale sensitivity / epsilon).

    Serving mechanism ``laplace-embedding``: ``epsilon`` per query.
    """

    mechanism: ClassVar[str] = "laplace-embedding"
    epsilon: float

    def __post_init__(self) -> None:
        _set(self, "epsilon", _positive_float(self, "epsilon", self.epsilon))

    @classmethod
    def from_mechanism(cls, parameter: MechanismParameter) -> LaplaceQuery:
        return cls(epsilon=parameter("epsilon"))

    def rdp(self, orders: tuple[float, ...]) -> np.ndarray:
        return laplace_rdp(self.epsilon, orders)

    def pure_epsilon(self) -> float | None:
        return self.epsilon

    def pld_component(self, count: int) -> Component | None:
        return Component(
            RANK_PURE,
            "laplace",
            (self.epsilon,),
            count,
            partial(_laplace_pld, self.epsilon),
        )


def _subsampled_gaussian_pld(
    noise_multiplier: float, sample_rate: float, interval: float
) -> PLD:
    return gaussian_pld(noise_multiplier, interval, sampling_prob=sample_rate)


def _laplace_pld(epsilon: float, interval: float) -> PLD:
    return laplace_pld(1.0 / epsilon, interval)


Event: TypeAlias = DPEvent
Spend: TypeAlias = tuple[Event, int]


def validate_event(event: object) -> Event:
    """The event itself, or a ValueError saying what it is instead."""
    if not isinstance(event, DPEvent):
        names = ", ".join(t.__name__ for t in event_types())
        raise ValueError(f"event must be one of {names}, got {type(event).__name__}")
    return event


def validate_count(count: object, field: str = "count") -> int:
    """A repetition count: an integer >= 0."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"{field} must be an integer >= 0, got {count!r}")
    return count


def validate_spends(spends: object) -> tuple[Spend, ...]:
    """The spends as a tuple of (event, count) pairs, each checked."""
    if isinstance(spends, str | bytes) or not hasattr(spends, "__iter__"):
        raise ValueError("spends must be a sequence of (event, count) pairs")
    checked: list[Spend] = []
    for index, item in enumerate(spends):
        if not isinstance(item, tuple) or len(item) != 2:
            raise ValueError(f"spends[{index}] must be an (event, count) pair, got {item!r}")
        event = validate_event(item[0])
        checked.append((event, validate_count(item[1], f"spends[{index}].count")))
    return tuple(checked)


def validate_delta(delta: object) -> float:
    """delta as a float in (0, 1)."""
    if isinstance(delta, bool) or not isinstance(delta, int | float):
        raise ValueError(f"delta must be a number, got {type(delta).__name__}")
    value = float(delta)
    if not math.isfinite(value) or not 0.0 < value < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")
    return value


def validate_epsilon(epsilon: object) -> float:
    """A target epsilon as a finite float >= 0."""
    if isinstance(epsilon, bool) or not isinstance(epsilon, int | float):
        raise ValueError(f"epsilon must be a number, got {type(epsilon).__name__}")
    value = float(epsilon)
    if not math.isfinite(value) or value < 0.0:
        raise ValueError(f"epsilon must be finite and >= 0, got {epsilon!r}")
    return value

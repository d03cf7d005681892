"""Today's pld/rdp solver, frozen as the oracle of the speed-ups (commit HEAD of 2026-12-04).

A copy of ``dpserve.accounting`` as it was before the PLD speed-ups and the event-class
refactor: the isinstance dispatch, dp-accounting's own ``from_gaussian_mechanism`` and
the solver's search, with no cache beyond the ones it had. It lives only here (tests and
``bench/ledger.py``) so that the property test can say: the shipped solver returns the
same integers as this one. Do not "fix" it: it is the reference, not the product.
"""

# ruff: noqa
# mypy: ignore-errors

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from fractions import Fraction
from functools import lru_cache
from dataclasses import dataclass

import dp_accounting
import numpy as np
from dp_accounting.pld import privacy_loss_distribution as pld_lib
from dp_accounting.rdp.rdp_privacy_accountant import RdpAccountant

from dpserve.accounting.events import (
    GaussianQuery,
    GNMaxQuery,
    LaplaceQuery,
    SubsampledGaussian,
    validate_spends,
)
from dpserve.accounting.gdp import epsilon_for_mu_squared, mu_squared_for_epsilon
from dpserve.accounting.orders import DEFAULT_ORDERS
from dpserve.accounting.rdp import Conversion
from dpserve.accounting.sampled_gaussian import poisson_subsampled_gaussian_rdp

Event = object
Spend = tuple
PLD_MAX_EPSILON = 100.0
_ADD_OR_REMOVE = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
_REPLACE_ONE_SENSITIVITY = 2.0
SHUFFLE_UNITS_PER_EPOCH = 5

def _library_rdp(
    event: dp_accounting.DpEvent,
    orders: tuple[float, ...],
    relation: dp_accounting.NeighboringRelation = _ADD_OR_REMOVE,
) -> np.ndarray:
    accountant = RdpAccountant(orders=list(orders), neighboring_relation=relation)
    accountant.compose(event)
    return np.asarray(accountant.rdp, dtype=np.float64)


def gaussian_units(event: Event) -> tuple[float, float] | None:
    """(noise multiplier, repetitions) when one event is plain unsubsampled Gaussians.

    Gaussian queries, GNMax, full-batch training (q = 1) and shuffled training (no
    amplification claimed) all are; Poisson and without-replacement training with
    q < 1, and Laplace, are not.
    """
    if isinstance(event, GaussianQuery | GNMaxQuery):
        return event.noise_multiplier, 1.0
    if isinstance(event, SubsampledGaussian):
        if event.sample_rate == 1.0:
            return event.noise_multiplier, float(event.steps)
        if event.sampling == "shuffle":
            return event.noise_multiplier, float(shuffle_units(event))
    return None


def shuffle_units(event: SubsampledGaussian) -> int:
    """Unit-sensitivity Gaussian steps charged for a shuffled-batch run.

    One per step (the conservative, amplification-free count), but never fewer than
    five per started epoch, which is what one epoch can cost when batches are huge.
    """
    epochs = math.ceil(event.steps * event.sample_rate)
    return max(event.steps, SHUFFLE_UNITS_PER_EPOCH * epochs)


def _without_replacement_rdp(event: SubsampledGaussian, orders: tuple[float, ...]) -> np.ndarray:
    # dp-accounting wants integer sizes; only their ratio enters the bound, so use the
    # exact fraction behind the float sample rate.
    ratio = Fraction(event.sample_rate).limit_denominator(10**12)
    sampled = dp_accounting.SampledWithoutReplacementDpEvent(
        source_dataset_size=ratio.denominator,
        sample_size=ratio.numerator,
        event=dp_accounting.GaussianDpEvent(event.noise_multiplier / _REPLACE_ONE_SENSITIVITY),
    )
    return _library_rdp(sampled, orders, dp_accounting.NeighboringRelation.REPLACE_ONE)


@lru_cache(maxsize=1024)
def event_rdp(event: Event, orders: tuple[float, ...]) -> np.ndarray:
    """RDP of one occurrence of ``event`` at each order (read-only, cached)."""
    gaussian = gaussian_units(event)
    if gaussian is not None:
        noise_multiplier, units = gaussian
        vector = units * _library_rdp(dp_accounting.GaussianDpEvent(noise_multiplier), orders)
    elif isinstance(event, LaplaceQuery):
        vector = _library_rdp(dp_accounting.LaplaceDpEvent(1.0 / event.epsilon), orders)
    elif isinstance(event, SubsampledGaussian) and event.sampling == "poisson":
        step = poisson_subsampled_gaussian_rdp(event.sample_rate, event.noise_multiplier, orders)
        vector = event.steps * step
    elif isinstance(event, SubsampledGaussian):
        vector = event.steps * _without_replacement_rdp(event, orders)
    else:  # pragma: no cover - validate_event rejects anything else first
        raise ValueError(f"unsupported event {event!r}")
    # RDP is non-negative; a negative entry can only be rounding, and 0 is the safe side.
    vector = np.maximum(vector, 0.0)
    vector.setflags(write=False)
    return vector



Component = tuple


def component_order(component: Component) -> tuple[int, Component]:
    """Sort key: Poisson, then Laplace, then the (most often changing) Gaussian."""
    rank = {"poisson": 0, "laplace": 1, "gaussian": 2}[component[0]]
    return rank, component


@lru_cache(maxsize=64)
def _component_pld(component: Component, interval: float) -> PLD:
    kind = component[0]
    if kind == "gaussian":
        _, mu_squared = component  # type: ignore[misc]
        return pld_lib.from_gaussian_mechanism(
            standard_deviation=1.0 / math.sqrt(float(mu_squared)),
            value_discretization_interval=interval,
        )
    if kind == "laplace":
        _, epsilon, count = component  # type: ignore[misc]
        single = pld_lib.from_laplace_mechanism(
            parameter=1.0 / float(epsilon), value_discretization_interval=interval
        )
        return single.self_compose(int(count)) if int(count) > 1 else single
    _, sample_rate, noise_multiplier, steps = component  # type: ignore[misc]
    single = pld_lib.from_gaussian_mechanism(
        standard_deviation=float(noise_multiplier),
        sampling_prob=float(sample_rate),
        value_discretization_interval=interval,
    )
    return single.self_compose(int(steps)) if int(steps) > 1 else single


@lru_cache(maxsize=32)
def _composed_pld(components: tuple[Component, ...], interval: float) -> PLD:
    last = _component_pld(components[-1], interval)
    if len(components) == 1:
        return last
    return _composed_pld(components[:-1], interval).compose(last)


@lru_cache(maxsize=4096)
def pld_epsilon(components: tuple[Component, ...], delta: float, interval: float) -> float:
    """Epsilon at ``delta`` of the composition of ``components`` (sorted by the caller)."""
    if not components:
        return 0.0
    return float(_composed_pld(components, interval).get_epsilon_for_delta(delta))


@dataclass(frozen=True)
class Summary:
    """What the bounds need to know about a spend list."""

    rdp_all: np.ndarray
    rdp_non_pure: np.ndarray
    pure_epsilon: float
    has_pure: bool
    has_non_pure: bool
    gaussian_mu_squared: float
    non_pure_all_gaussian: bool
    pld_components: tuple[Component, ...] | None

    @property
    def empty(self) -> bool:
        return not (self.has_pure or self.has_non_pure)


def summarize(spends: tuple[Spend, ...], vector_of: VectorLookup, size: int) -> Summary:
    """Reduce validated spends to a :class:`Summary` (left folds: deterministic)."""
    rdp_all = np.zeros(size, dtype=np.float64)
    rdp_non_pure = np.zeros(size, dtype=np.float64)
    pure_terms: list[float] = []
    mu_terms: list[float] = []
    laplace_counts: dict[float, int] = {}
    poisson_steps: dict[tuple[float, float], int] = {}
    non_pure_all_gaussian = True
    pld_supported = True
    has_non_pure = False
    for event, count in spends:
        if count == 0:
            continue
        scaled = count * vector_of(event)
        rdp_all = rdp_all + scaled
        if isinstance(event, LaplaceQuery):
            pure_terms.append(count * event.epsilon)
            laplace_counts[event.epsilon] = laplace_counts.get(event.epsilon, 0) + count
            continue
        has_non_pure = True
        rdp_non_pure = rdp_non_pure + scaled
        gaussian = gaussian_units(event)
        if gaussian is not None:
            noise_multiplier, units = gaussian
            mu_terms.append(count * units / (noise_multiplier * noise_multiplier))
            continue
        non_pure_all_gaussian = False
        assert isinstance(event, SubsampledGaussian)
        if event.sampling == "poisson":
            key = (event.sample_rate, event.noise_multiplier)
            poisson_steps[key] = poisson_steps.get(key, 0) + count * event.steps
        else:
            pld_supported = False
    mu_squared = math.fsum(mu_terms)
    components: tuple[Component, ...] | None = None
    if pld_supported:
        found: list[Component] = [("poisson", q, z, s) for (q, z), s in poisson_steps.items()]
        found += [("laplace", eps, c) for eps, c in laplace_counts.items()]
        if mu_squared > 0:
            found.append(("gaussian", mu_squared))
        components = tuple(sorted(found, key=component_order))
    return Summary(
        rdp_all=rdp_all,
        rdp_non_pure=rdp_non_pure,
        pure_epsilon=math.fsum(pure_terms),
        has_pure=bool(pure_terms),
        has_non_pure=has_non_pure,
        gaussian_mu_squared=mu_squared,
        non_pure_all_gaussian=non_pure_all_gaussian,
        pld_components=components,
    )


def iter_bounds(
    summary: Summary, conversion: Conversion, kind: AccountantKind, pld_interval: float
) -> Iterator[tuple[str, float]]:
    """Every valid bound as (name, epsilon), cheapest first; nothing for an empty list."""
    if summary.empty:
        return
    best = conversion.epsilon(summary.rdp_all)
    yield "rdp", best
    if summary.has_pure:
        rest = conversion.epsilon(summary.rdp_non_pure) if summary.has_non_pure else 0.0
        best = min(best, summary.pure_epsilon + rest)
        yield "pure-dp+rdp", summary.pure_epsilon + rest
    if kind != "pld":
        return
    if summary.non_pure_all_gaussian:
        gdp = epsilon_for_mu_squared(summary.gaussian_mu_squared, conversion.delta)
        best = min(best, summary.pure_epsilon + gdp)
        yield "pure-dp+gdp", summary.pure_epsilon + gdp
    gdp_is_exact = summary.non_pure_all_gaussian and not summary.has_pure
    if summary.pld_components is not None and not gdp_is_exact and best <= PLD_MAX_EPSILON:
        yield "pld", pld_epsilon(summary.pld_components, conversion.delta, pld_interval)


def closed_form_guess(
    base: Summary,
    event: Event,
    event_vector: np.ndarray,
    conversion: Conversion,
    kind: AccountantKind,
    budget: float,
) -> float:
    """A real-valued estimate of the largest count that fits (may be +-inf)."""
    candidates = [conversion.max_count(base.rdp_all, event_vector, budget)]
    pure_room = budget - base.pure_epsilon
    if isinstance(event, LaplaceQuery):
        rest = conversion.epsilon(base.rdp_non_pure) if base.has_non_pure else 0.0
        candidates.append((pure_room - rest) / event.epsilon)
        if kind == "pld" and base.non_pure_all_gaussian:
            gdp = epsilon_for_mu_squared(base.gaussian_mu_squared, conversion.delta)
            candidates.append((pure_room - gdp) / event.epsilon)
        return max(candidates)
    if base.has_pure:
        candidates.append(conversion.max_count(base.rdp_non_pure, event_vector, pure_room))
    gaussian = gaussian_units(event)
    if kind == "pld" and gaussian is not None and base.non_pure_all_gaussian and pure_room > 0:
        noise_multiplier, units = gaussian
        per_event = units / (noise_multiplier * noise_multiplier)
        allowed = mu_squared_for_epsilon(pure_room, conversion.delta)
        candidates.append((allowed - base.gaussian_mu_squared) / per_event)
    return max(candidates)


def refine(
    fits: Callable[[int], bool],
    guess: float,
    limit: int,
    value: Callable[[int], float] | None = None,
    budget: float = math.inf,
) -> int:
    """The largest n in [0, limit] with fits(n), searching from ``guess``.

    Assumes fits is monotone (true up to some n, false after). Returns 0 when even
    fits(0) is false: nothing more can be granted. With ``value`` (epsilon as a
    function of n, fits(n) == value(n) <= budget) an upward search interpolates on it
    instead of galloping: fewer probes, which matters when each costs a PLD.
    """
    if math.isnan(guess) or guess == -math.inf:
        start = 0
    elif guess == math.inf:
        start = limit
    else:
        start = int(min(max(math.floor(guess), 0), limit))
    if fits(start):
        if start == limit or not fits(start + 1):
            return start
        if value is not None:
            return _interpolate_up(value, budget, start + 1, limit)
        low, step = start + 1, 2
        while low < limit:
            high = min(limit, low + step)
            if not fits(high):
                return _bisect(fits, low, high)
            low, step = high, step * 2
        return limit
    high, step = start, 1
    while high > 0:
        low = max(0, high - step)
        if fits(low):
            return _bisect(fits, low, high)
        high, step = low, step * 2
    return 0


def _interpolate_up(value: Callable[[int], float], budget: float, low: int, limit: int) -> int:
    """Largest n in [low, limit] with value(n) <= budget, given value(low) <= budget.

    Secant steps to bracket the crossing, then regula falsi (Illinois variant) inside
    the bracket; value(n) is smooth in n, so a handful of probes find the integer.
    """
    value_low = value(low)
    step = max(1, low // 50)
    high, value_high = low, value_low
    while True:
        high = min(limit, low + step)
        value_high = value(high)
        if value_high > budget:
            break
        if high == limit:
            return limit
        slope = (value_high - value_low) / (high - low)
        low, value_low = high, value_high
        # Aim 5% past the predicted crossing so the next probe usually brackets it.
        predicted = (budget - value_low) / slope if slope > 0 else float(step * 2)
        step = max(1, min(step * 8, math.ceil(predicted * 1.05) + 1))
    # Illinois: an end kept while the other moved twice gets its weight halved.
    kept_low = kept_high = 0
    while high - low > 1:
        weight_low = (budget - value_low) / 2.0 ** min(50, max(0, kept_low - 1))
        weight_high = (value_high - budget) / 2.0 ** min(50, max(0, kept_high - 1))
        total = weight_low + weight_high
        fraction = weight_low / total if total > 0 else 0.5
        middle = min(high - 1, max(low + 1, low + round(fraction * (high - low))))
        value_middle = value(middle)
        if value_middle <= budget:
            low, value_low = middle, value_middle
            kept_high, kept_low = kept_high + 1, 0
        else:
            high, value_high = middle, value_middle
            kept_low, kept_high = kept_low + 1, 0
    return low


def _bisect(fits: Callable[[int], bool], low: int, high: int) -> int:
    """Largest n in [low, high) with fits(n), given fits(low) and not fits(high)."""
    while high - low > 1:
        middle = (low + high) // 2
        if fits(middle):
            low = middle
        else:
            high = middle
    return low


_vectors: dict = {}
_conversions: dict = {}


def _vector(event):
    if event not in _vectors:
        _vectors[event] = event_rdp(event, DEFAULT_ORDERS)
    return _vectors[event]


def _conversion(delta):
    if delta not in _conversions:
        _conversions[delta] = Conversion(DEFAULT_ORDERS, delta)
    return _conversions[delta]


def _summary(spends):
    return summarize(spends, _vector, len(DEFAULT_ORDERS))


def reference_epsilon(spends: Sequence, delta: float, kind: str = "pld") -> float:
    """Today's ``Accountant(kind).epsilon`` (default orders and discretization)."""
    bounds = [v for _, v in iter_bounds(_summary(validate_spends(spends)), _conversion(delta), kind, 1e-4)]
    return min(bounds) if bounds else 0.0


def reference_max_additional(
    spends: Sequence, event, epsilon: float, delta: float, kind: str = "pld", limit: int = 10**9
) -> int:
    """Today's ``Accountant(kind).max_additional``."""
    checked = validate_spends(spends)
    conversion = _conversion(delta)
    budget = float(epsilon)
    guess = closed_form_guess(_summary(checked), event, _vector(event), conversion, kind, budget)

    def fits(count):
        summary = _summary((*checked, (event, count)))
        return any(v <= budget for _, v in iter_bounds(summary, conversion, kind, 1e-4))

    def value(count):
        summary = _summary((*checked, (event, count)))
        bounds = [v for _, v in iter_bounds(summary, conversion, kind, 1e-4)]
        return min(bounds) if bounds else 0.0

    return refine(fits, guess, limit, value if kind == "pld" else None, budget)

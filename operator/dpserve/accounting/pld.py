"""Privacy loss distributions (dp-accounting) of a ledger's spends, cached.

Every PLD is built with dp-accounting's defaults that make it an upper bound:
pessimistic rounding of the privacy loss onto a grid of width
``value_discretization_interval`` (1e-4 by default), connect-the-dots construction,
and tail mass truncated at 1e-15 and counted as infinite loss. So
``get_epsilon_for_delta`` is a valid epsilon, a little above the exact one.

The ledger's spends are reduced to components (each event class states its own,
``DPEvent.pld_component``), composed in a fixed order:
Poisson-subsampled training runs (self-composed ``steps * count`` times), Laplace
queries (self-composed ``count`` times), and last one Gaussian for *all* plain
Gaussian spends together (they compose exactly to a Gaussian of std 1/mu). The
composition of each prefix is cached, so probing "n more Gaussian queries" only
rebuilds the last component and one convolution.

Cost (2 cores, interval 1e-4): a Gaussian PLD takes ~0.01-0.3 s (more for small
std; dp-accounting's own loop took 3-4x that, see ``_VectorizedGaussianLoss``),
14,000 Poisson steps ~1 s, 1,000 Laplace queries ~1 s; each composition
~0.1 s. Sampling without replacement has no PLD here (dp-accounting's PLD accountant
does not support it): ledgers holding such a spend use the RDP bounds only.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, TypeAlias

import numpy as np
from dp_accounting.pld import privacy_loss_distribution as pld_lib
from dp_accounting.pld import privacy_loss_mechanism as loss_lib

PLD: TypeAlias = pld_lib.PrivacyLossDistribution
SinglePld: TypeAlias = Callable[[float], PLD]

# Composition order of the component kinds: the most often changing (the merged
# Gaussian, which every new Gaussian query moves) last, so its prefix stays cached.
RANK_SUBSAMPLED = 0
RANK_PURE = 1
RANK_GAUSSIAN = 2


@dataclass(frozen=True, order=True)
class Component:
    """``repetitions`` self-compositions of one mechanism's PLD, a cacheable key.

    Equal (rank, kind, params) name the same mechanism, so components are compared and
    hashed on those and ``repetitions`` only; ``single`` builds one occurrence's PLD at a
    discretization interval. Components sort by (rank, kind, params, repetitions): the
    fixed composition order of a ledger.
    """

    rank: int
    kind: str
    params: tuple[float, ...]
    repetitions: int
    single: SinglePld = field(compare=False, repr=False)

    def merged(self, more: int) -> Component:
        """The same mechanism, ``more`` further repetitions."""
        return Component(self.rank, self.kind, self.params, self.repetitions + more, self.single)


class _VectorizedGaussianLoss(loss_lib.GaussianPrivacyLoss):  # type: ignore[misc]
    """dp-accounting's Gaussian privacy loss, its hockey-stick divergence vectorised.

    The library computes the inverse privacy loss one grid point at a time in a Python
    loop (~90% of building a Gaussian PLD: ~1 s for 300k grid points). Without
    subsampling that inverse is ``-s/2 - eps * std^2 / s``, the same IEEE operations in
    the same order on a numpy array, so the divergences, and the PLD, are bit for bit the
    library's (tests/accounting/test_pld_speed.py compares them). Every other case goes
    to the library's own code.
    """

    def get_delta_for_epsilon(self, epsilon: Any) -> Any:
        if (
            self.sampling_prob != 1.0
            or self.adjacency_type != loss_lib.AdjacencyType.REMOVE
            or isinstance(epsilon, numbers.Number)
        ):
            return super().get_delta_for_epsilon(epsilon)
        epsilons = np.asarray(epsilon)
        variance = self._standard_deviation**2
        x_cutoffs = -0.5 * self.sensitivity - epsilons * variance / self.sensitivity
        deltas = np.zeros_like(epsilons, dtype=float)
        deltas[:] = self.mu_upper_cdf(x_cutoffs) - np.exp(
            epsilons + self.mu_lower_log_cdf(x_cutoffs)
        )
        return np.clip(deltas, 0, 1)


def gaussian_pld(
    standard_deviation: float, interval: float, sampling_prob: float = 1.0
) -> PLD:
    """One (optionally Poisson-subsampled) Gaussian mechanism of sensitivity 1.

    ``from_gaussian_mechanism``'s result with its defaults (connect-the-dots, pessimistic,
    mass truncated at e^-50); without subsampling built through the vectorised loss.
    """
    if sampling_prob != 1.0:
        return pld_lib.from_gaussian_mechanism(
            standard_deviation=standard_deviation,
            sampling_prob=sampling_prob,
            value_discretization_interval=interval,
        )
    loss = _VectorizedGaussianLoss(
        standard_deviation,
        sensitivity=1,
        pessimistic_estimate=True,
        log_mass_truncation_bound=-50,
        sampling_prob=1.0,
        adjacency_type=loss_lib.AdjacencyType.REMOVE,
    )
    pmf = pld_lib._create_pld_pmf_from_monotone_privacy_loss(
        loss,
        pessimistic_estimate=True,
        value_discretization_interval=interval,
        use_connect_dots=True,
    )
    return pld_lib.PrivacyLossDistribution(pmf)


def laplace_pld(parameter: float, interval: float) -> PLD:
    """One Laplace mechanism of scale ``parameter`` (sensitivity 1)."""
    return pld_lib.from_laplace_mechanism(
        parameter=parameter, value_discretization_interval=interval
    )


def _merged_gaussian_single(mu_squared: float, interval: float) -> PLD:
    return gaussian_pld(1.0 / math.sqrt(mu_squared), interval)


def merged_gaussian(mu_squared: float) -> Component:
    """All plain Gaussian spends of a ledger as one Gaussian of std 1/mu (exact: GDP)."""
    return Component(
        RANK_GAUSSIAN,
        "gaussian",
        (float(mu_squared),),
        1,
        lambda interval: _merged_gaussian_single(float(mu_squared), interval),
    )


@lru_cache(maxsize=64)
def _component_pld(component: Component, interval: float) -> PLD:
    single = component.single(interval)
    return single.self_compose(component.repetitions) if component.repetitions > 1 else single


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

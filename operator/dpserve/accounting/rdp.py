"""RDP of each event, the RDP -> (epsilon, delta) conversion, and its closed-form inverse.

RDP composes by addition at every order, so the ledger keeps one vector per event
(cached: events are hashable; each event class computes its own vector from the pure
functions here) and sums ``count * vector``. The conversion is the one
dp-accounting's ``compute_epsilon`` and Opacus' ``get_privacy_spent`` both use
(Balle et al. 2020, Thm. 21; Canonne, Kamath and Steinke 2020, Prop. 12):

    epsilon(alpha) = rdp(alpha) + log(1 - 1/alpha) - log(delta * alpha) / (alpha - 1)

minimised over the orders, plus dp-accounting's KL shortcut (epsilon = 0 when
delta^2 > 1 - exp(-rdp)). It is written here vectorised over the orders (the
library's is a Python loop) because the ledger evaluates it on its hot path; tests
check it against dp-accounting's ``compute_epsilon`` to the last bit.
"""

from __future__ import annotations

import math
from fractions import Fraction
from functools import lru_cache
from typing import TYPE_CHECKING

import dp_accounting
import numpy as np
from dp_accounting.rdp.rdp_privacy_accountant import RdpAccountant

if TYPE_CHECKING:
    from dpserve.accounting.events import Event

_ADD_OR_REMOVE = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
# dp-accounting's conversion is undefined (unstable) at orders <= 1.01.
_MIN_CONVERSION_ORDER = 1.01
# Clipped gradients sum to sensitivity C under add/remove, 2C under replace-one.
_REPLACE_ONE_SENSITIVITY = 2.0
# In the shuffle model of docs/accounting.md an epoch changes at most two batches, one by
# a swap (2C) and one by an extra record (C): 2^2 + 1^2 = 5 unit-sensitivity steps.
SHUFFLE_UNITS_PER_EPOCH = 5


def _library_rdp(
    event: dp_accounting.DpEvent,
    orders: tuple[float, ...],
    relation: dp_accounting.NeighboringRelation = _ADD_OR_REMOVE,
) -> np.ndarray:
    accountant = RdpAccountant(orders=list(orders), neighboring_relation=relation)
    accountant.compose(event)
    return np.asarray(accountant.rdp, dtype=np.float64)


def gaussian_rdp(noise_multiplier: float, orders: tuple[float, ...]) -> np.ndarray:
    """RDP of one Gaussian mechanism (noise std / L2 sensitivity = ``noise_multiplier``)."""
    return _library_rdp(dp_accounting.GaussianDpEvent(noise_multiplier), orders)


def laplace_rdp(epsilon: float, orders: tuple[float, ...]) -> np.ndarray:
    """RDP of one pure ``epsilon``-DP Laplace release (Mironov 2017, Prop. 6)."""
    return _library_rdp(dp_accounting.LaplaceDpEvent(1.0 / epsilon), orders)


def shuffle_units(steps: int, sample_rate: float) -> int:
    """Unit-sensitivity Gaussian steps charged for a shuffled-batch run.

    One per step (the conservative, amplification-free count), but never fewer than
    five per started epoch, which is what one epoch can cost when batches are huge.
    """
    epochs = math.ceil(steps * sample_rate)
    return max(steps, SHUFFLE_UNITS_PER_EPOCH * epochs)


def without_replacement_rdp(
    sample_rate: float, noise_multiplier: float, orders: tuple[float, ...]
) -> np.ndarray:
    """RDP of one step of fixed-size batches drawn without replacement (replace-one)."""
    # dp-accounting wants integer sizes; only their ratio enters the bound, so use the
    # exact fraction behind the float sample rate.
    ratio = Fraction(sample_rate).limit_denominator(10**12)
    sampled = dp_accounting.SampledWithoutReplacementDpEvent(
        source_dataset_size=ratio.denominator,
        sample_size=ratio.numerator,
        event=dp_accounting.GaussianDpEvent(noise_multiplier / _REPLACE_ONE_SENSITIVITY),
    )
    return _library_rdp(sampled, orders, dp_accounting.NeighboringRelation.REPLACE_ONE)


@lru_cache(maxsize=1024)
def event_rdp(event: Event, orders: tuple[float, ...]) -> np.ndarray:
    """RDP of one occurrence of ``event`` at each order (read-only, cached)."""
    # RDP is non-negative; a negative entry can only be rounding, and 0 is the safe side.
    vector: np.ndarray = np.maximum(event.rdp(orders), 0.0)
    vector.setflags(write=False)
    return vector


class Conversion:
    """RDP -> epsilon at one delta over one order grid, with its per-order constants."""

    def __init__(self, orders: tuple[float, ...], delta: float) -> None:
        self.orders = np.asarray(orders, dtype=np.float64)
        usable = self.orders > _MIN_CONVERSION_ORDER
        # Kept as two terms, added in dp-accounting's order, so results match it bit for bit.
        with np.errstate(divide="ignore", invalid="ignore"):
            self.log1p_term = np.log1p(-1.0 / self.orders)
            log_term = np.log(delta * self.orders) / (self.orders - 1)
        self.log_term = np.where(usable, log_term, -np.inf)
        self.offset = self.log1p_term - self.log_term
        # epsilon is 0 at an order whose RDP is below this (KL bound).
        self.kl_threshold = -math.log1p(-delta * delta)
        self.delta = delta

    def epsilon(self, rdp: np.ndarray) -> float:
        """The best epsilon over the orders for the composed RDP vector ``rdp``."""
        with np.errstate(invalid="ignore"):
            per_order = np.where(
                self.delta * self.delta + np.expm1(-rdp) > 0,
                0.0,
                rdp + self.log1p_term - self.log_term,
            )
        best = float(np.min(per_order))
        if math.isnan(best):
            return math.inf
        return max(0.0, best)

    def max_count(self, base: np.ndarray, step: np.ndarray, budget: float) -> float:
        """Largest real n with epsilon(base + n * step) <= budget (closed form per order).

        Returns -inf when even n = 0 does not fit and +inf when ``step`` costs nothing
        at an order that already fits. Callers refine the integer with exact checks.
        """
        if budget < 0:
            return -math.inf
        with np.errstate(divide="ignore", invalid="ignore"):
            room_formula = budget - self.offset - base
            room_kl = self.kl_threshold - base
            free = step <= 0
            n_formula = np.where(
                free, np.where(room_formula >= 0, np.inf, -np.inf), room_formula / step
            )
            n_kl = np.where(free, np.where(room_kl > 0, np.inf, -np.inf), room_kl / step)
        best = np.nanmax(np.maximum(n_formula, n_kl))
        return float(best)


def total_rdp(parts: list[tuple[np.ndarray, int]], size: int) -> np.ndarray:
    """Sum of ``count * vector`` in the given order (left fold: deterministic)."""
    total = np.zeros(size, dtype=np.float64)
    for vector, count in parts:
        if count:
            total = total + count * vector
    return total

"""How many more of one event fit in a budget: closed-form guess, then exact refinement.

Each bound is non-decreasing in the count n, so "epsilon(spends + [(event, n)]) <=
budget" (the minimum of the bounds) holds exactly for n up to the largest n any one
bound allows. The guess takes that maximum in closed form:

- RDP is additive per order: at order a, n <= (budget - offset_a - base_a) / step_a,
  one vectorised division over the orders (same for the RDP part of ``pure-dp+rdp``);
- pure-DP sums and Gaussian DP invert directly (n <= room / epsilon0, or
  n <= (mu*^2 - mu^2) * z^2 with mu* from dp-accounting's ``get_sigma_gaussian``).

The guess is then checked with the very function that ``epsilon`` uses, and moved by
galloping + bisection until n fits and n + 1 does not. With RDP that is two checks of
~20 us each. The PLD bound has no closed form: when it is in play the refinement
probes it (one PLD composition per probe, cached by components), typically 2-20
probes; the cheap bounds are tried first in every check, so PLD is only built for
counts the cheap bounds refuse.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from dpserve.accounting.compose import AccountantKind, Summary
from dpserve.accounting.events import Event
from dpserve.accounting.gdp import epsilon_for_mu_squared, mu_squared_for_epsilon
from dpserve.accounting.rdp import Conversion


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
    pure = event.pure_epsilon()
    if pure is not None:
        rest = conversion.epsilon(base.rdp_non_pure) if base.has_non_pure else 0.0
        candidates.append((pure_room - rest) / pure)
        if kind == "pld" and base.non_pure_all_gaussian:
            gdp = epsilon_for_mu_squared(base.gaussian_mu_squared, conversion.delta)
            candidates.append((pure_room - gdp) / pure)
        return max(candidates)
    if base.has_pure:
        candidates.append(conversion.max_count(base.rdp_non_pure, event_vector, pure_room))
    gaussian = event.gaussian_units()
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
        # Aim 5% past the predicted crossing so the next probe usually brackets it. The
        # step follows the prediction (epsilon(n) is close to linear over a lease: on the
        # ledger of a DP-SGD run and Gaussian queries two points predict the crossing
        # within a few percent); growth is capped at 1000x per step only against a slope
        # measured flat by the PLD's discretization. The answer does not depend on the
        # probes (fits is monotone), only the number of PLDs built does.
        predicted = (budget - value_low) / slope if slope > 0 else float(step * 2)
        step = max(1, min(step * 1000, math.ceil(predicted * 1.05) + 1))
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

"""Composition of a ledger's spends: every valid (epsilon, delta) bound, smallest wins.

A spend list is first reduced to a :class:`Summary` (RDP vectors, the pure-DP sum,
the Gaussian-DP mu^2, the PLD components). Then each bound that is valid for it is
evaluated; ``epsilon`` is their minimum. The bounds, cheapest first:

``rdp``
    RDP of everything, composed per order, converted at the best order.
``pure-dp+rdp``
    Basic composition of the pure-DP (Laplace) part, sum of its epsilons, with the RDP
    bound of the rest at the same delta. With only Laplace spends this is the plain
    sum: one epsilon0 = 1 query costs exactly 1 (finite-order RDP says ~1.01).
``pure-dp+gdp`` (accountant ``pld`` only)
    When everything but the Laplace part is plain Gaussian: the exact Gaussian-DP
    epsilon of that part plus the Laplace sum.
``pld`` (accountant ``pld`` only)
    dp-accounting's PLD of everything (pessimistic, see ``pld.py``). Skipped where it
    cannot win (only Gaussian spends: Gaussian DP is exact there), is unavailable
    (sampling without replacement), or would be huge: its grid grows with the privacy
    loss, so it is not built once the other bounds exceed ``PLD_MAX_EPSILON``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np

from dpserve.accounting.events import Event, Spend
from dpserve.accounting.gdp import epsilon_for_mu_squared
from dpserve.accounting.pld import Component, merged_gaussian, pld_epsilon
from dpserve.accounting.rdp import Conversion

AccountantKind = Literal["rdp", "pld"]
ACCOUNTANT_KINDS: tuple[str, ...] = ("rdp", "pld")
VectorLookup = Callable[[Event], np.ndarray]
# Above this epsilon a PLD's grid (losses up to ~epsilon at spacing 1e-4) gets large
# and no budget is that loose: the cheaper bounds answer alone.
PLD_MAX_EPSILON = 100.0


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
    """Reduce validated spends to a :class:`Summary` (left folds: deterministic).

    Asks each event for its bounds (``pure_epsilon``, ``gaussian_units``,
    ``pld_component``); never for its class.
    """
    rdp_all = np.zeros(size, dtype=np.float64)
    rdp_non_pure = np.zeros(size, dtype=np.float64)
    pure_terms: list[float] = []
    mu_terms: list[float] = []
    # Components of the same mechanism (rank, kind, params) merge their repetitions.
    components: dict[tuple[int, str, tuple[float, ...]], Component] = {}
    non_pure_all_gaussian = True
    pld_supported = True
    has_non_pure = False
    for event, count in spends:
        if count == 0:
            continue
        scaled = count * vector_of(event)
        rdp_all = rdp_all + scaled
        pure = event.pure_epsilon()
        if pure is None:
            has_non_pure = True
            rdp_non_pure = rdp_non_pure + scaled
            gaussian = event.gaussian_units()
            if gaussian is not None:
                noise_multiplier, units = gaussian
                mu_terms.append(count * units / (noise_multiplier * noise_multiplier))
                continue
            non_pure_all_gaussian = False
        else:
            pure_terms.append(count * pure)
        component = event.pld_component(count)
        if component is None:
            pld_supported = False
            continue
        key = (component.rank, component.kind, component.params)
        known = components.get(key)
        components[key] = component if known is None else known.merged(component.repetitions)
    mu_squared = math.fsum(mu_terms)
    found: tuple[Component, ...] | None = None
    if pld_supported:
        parts = list(components.values())
        if mu_squared > 0:
            parts.append(merged_gaussian(mu_squared))
        found = tuple(sorted(parts))
    return Summary(
        rdp_all=rdp_all,
        rdp_non_pure=rdp_non_pure,
        pure_epsilon=math.fsum(pure_terms),
        has_pure=bool(pure_terms),
        has_non_pure=has_non_pure,
        gaussian_mu_squared=mu_squared,
        non_pure_all_gaussian=non_pure_all_gaussian,
        pld_components=found,
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

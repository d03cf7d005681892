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

Every number is dp-accounting's, bit for bit: where this module replaces a library step
for speed it performs the same floating-point operations in the same order (tests compare
arrays and epsilons with the library's): the Gaussian loss over an array, subsampled or
not (``_VectorizedGaussianLoss``), the connect-the-dots PMF built from its arrays
(``_connect_dots_pmf``), the composition with reused FFT spectra and a vectorised tail
truncation (:func:`compose`), and epsilon for delta without a Python loop per grid point
(:func:`epsilon_for_delta`).

Cost (2 shared cores, interval 1e-4, ledger of a 14,063-step DP-SGD run and Gaussian
queries): a new merged-Gaussian PLD ~15 ms, its composition with the cached run ~17-35
ms, epsilon ~10-20 ms; the run's own PLD once: its subsampled loss ~20 ms (the library's
per-point loop took ~0.3 s), then a self-composition. Sampling without replacement has no
PLD here (dp-accounting's PLD accountant does not support it): ledgers holding such a spend
use the RDP bounds only.
"""

from __future__ import annotations

import math
import numbers
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, TypeAlias

import numpy as np
from dp_accounting.pld import pld_pmf as pmf_lib
from dp_accounting.pld import privacy_loss_distribution as pld_lib
from dp_accounting.pld import privacy_loss_mechanism as loss_lib
from scipy import fft as sp_fft
from scipy import signal

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
    loop (~90% of building a Gaussian PLD: ~1 s for 300k grid points; ~0.25 s for a
    DP-SGD run's subsampled one). Here the same IEEE operations run in the same order on a
    numpy array, so the divergences, and the PLD, are bit for bit the library's
    (tests/accounting/test_pld_speed.py compares them):

    - without subsampling the inverse is ``-s/2 - eps * std^2 / s``;
    - Poisson-subsampled, the loss first goes through the library's
      ``log_a_times_exp_b_plus_c(1/q, ±eps, 1 - 1/q)`` (``_inverse_privacy_loss_array``).

    A scalar epsilon, the REPLACE relation, and a grid point where the library would raise
    go to the library's own code.
    """

    def get_delta_for_epsilon(self, epsilon: Any) -> Any:
        if (
            self.adjacency_type == loss_lib.AdjacencyType.REPLACE
            or isinstance(epsilon, numbers.Number)
        ):
            return super().get_delta_for_epsilon(epsilon)
        epsilons = np.asarray(epsilon)
        deltas = np.zeros_like(epsilons, dtype=float)
        q = self.sampling_prob
        if q == 1.0:
            inverse = np.full_like(epsilons, True, dtype=bool)
        elif self.adjacency_type == loss_lib.AdjacencyType.ADD:
            inverse = epsilons < -math.log1p(-q)
        else:
            inverse = epsilons > math.log1p(-q)
            deltas[~inverse] = -np.expm1(epsilons[~inverse])
        x_cutoffs = self._inverse_privacy_loss_array(epsilons[inverse])
        if x_cutoffs is None:
            return super().get_delta_for_epsilon(epsilon)
        deltas[inverse] = self.mu_upper_cdf(x_cutoffs) - np.exp(
            epsilons[inverse] + self.mu_lower_log_cdf(x_cutoffs)
        )
        return np.clip(deltas, 0, 1)

    def _inverse_privacy_loss_array(self, losses: np.ndarray) -> np.ndarray | None:
        """``inverse_privacy_loss`` of each loss; None where the library would raise."""
        s, variance = self.sensitivity, self._standard_deviation**2
        q = self.sampling_prob
        add = self.adjacency_type == loss_lib.AdjacencyType.ADD
        if q == 1.0:
            unsampled = losses
        else:
            # The library's order: the edge of the loss's range first (math.isclose), then
            # a raise beyond it, then the subsampling transform.
            edge = -math.log(1 - q) if add else math.log(1 - q)
            at_edge = _isclose(losses, edge)
            inner = losses[~at_edge]
            if np.any(inner > edge) if add else np.any(inner <= edge):
                return None
            transformed = _log_a_times_exp_b_plus_c(1 / q, -inner if add else inner,
                                                    1 - 1 / q)
            if transformed is None:
                return None
            unsampled = np.empty_like(losses)
            unsampled[at_edge] = math.inf if add else -math.inf
            unsampled[~at_edge] = -transformed if add else transformed
        removed: np.ndarray = -0.5 * s - unsampled * variance / s
        return s + removed if add else removed


def _isclose(values: np.ndarray, target: float) -> np.ndarray:
    """``math.isclose(value, target)`` (rel_tol 1e-9, abs_tol 0) of each value, as CPython
    computes it."""
    diff = np.abs(target - values)
    finite = np.isfinite(values) & math.isfinite(target)
    close = (diff <= abs(1e-9 * target)) | (diff <= np.abs(1e-9 * values))
    result: np.ndarray = (values == target) | (finite & close)
    return result


def _log_a_times_exp_b_plus_c(a: float, b: np.ndarray, c: float) -> np.ndarray | None:
    """dp-accounting's ``common.log_a_times_exp_b_plus_c`` for ``a > 0 > c`` (subsampling)
    on an array of ``b``; None where the library raises (its ``_log_sub`` with b >= a)."""
    log_c = np.log(-c)
    d = b + np.log(a)
    if np.any((b != 0) & (log_c >= d)):
        return None
    with np.errstate(invalid="ignore", divide="ignore"):  # entries b == 0 are replaced
        out: np.ndarray = d + np.log1p(-np.exp(log_c - d))
    out[b == 0] = np.log(a + c)
    return out


def gaussian_pld(
    standard_deviation: float, interval: float, sampling_prob: float = 1.0
) -> PLD:
    """One (optionally Poisson-subsampled) Gaussian mechanism of sensitivity 1.

    ``from_gaussian_mechanism``'s result with its defaults (connect-the-dots, pessimistic,
    mass truncated at e^-50, add-or-remove neighbours), built through the vectorised loss.
    """

    def pmf(adjacency: loss_lib.AdjacencyType) -> pmf_lib.PLDPmf:
        loss = _VectorizedGaussianLoss(
            standard_deviation,
            sensitivity=1,
            pessimistic_estimate=True,
            log_mass_truncation_bound=-50,
            sampling_prob=sampling_prob,
            adjacency_type=adjacency,
        )
        return _connect_dots_pmf(loss, interval)

    # The library's _pld_for_subsampled_mechanism: REMOVE alone is symmetric when q = 1.
    remove = pmf(loss_lib.AdjacencyType.REMOVE)
    if sampling_prob == 1.0:
        return pld_lib.PrivacyLossDistribution(remove)
    return pld_lib.PrivacyLossDistribution(remove, pmf(loss_lib.AdjacencyType.ADD))


def _connect_dots_pmf(loss: loss_lib.AdditiveNoisePrivacyLoss, interval: float
                      ) -> pmf_lib.PLDPmf:
    """dp-accounting's pessimistic connect-the-dots PMF of a continuous monotone loss
    (``_create_pld_pmf_from_monotone_privacy_loss`` and
    ``create_pmf_pessimistic_connect_dots_fixed_gap``, the same operations in the same
    order), except that a dense result is built from its arrays: the library passes them
    through a dict and a list of one entry per grid point (about half of building a
    200k-point Gaussian PMF). Anything else goes to the library's own code."""
    def library() -> pmf_lib.PLDPmf:
        return pld_lib._create_pld_pmf_from_monotone_privacy_loss(
            loss, pessimistic_estimate=True, value_discretization_interval=interval,
            use_connect_dots=True)

    bounds = loss.connect_dots_bounds()
    if loss.is_discrete or bounds.epsilon_upper is None or bounds.epsilon_lower is None:
        return library()
    upper = math.ceil(bounds.epsilon_upper / interval)
    lower = math.floor(bounds.epsilon_lower / interval)
    size = upper - lower + 1
    if size <= pmf_lib._MAX_PMF_SPARSE_SIZE:
        return library()  # a sparse PMF: small, the library's path is cheap
    deltas = np.asarray(
        loss.get_delta_for_epsilon(np.arange(lower, upper + 1) * interval), dtype=np.float64)
    if (deltas.size != size or np.any(deltas < 0) or np.any(deltas > 1)
            or np.any(np.diff(deltas) > pmf_lib._DELTA_DIFF_TOLERANCE)):
        return library()  # the library raises its own error
    deltas = np.minimum.accumulate(deltas)
    delta_diffs = np.diff(deltas)
    probs = np.zeros_like(deltas)
    probs[0] = 1 - deltas[0] + delta_diffs[0] / math.expm1(interval)
    probs[1:-1] = ((delta_diffs[1:] - delta_diffs[:-1] * math.exp(interval))
                   / math.expm1(interval))
    probs[-1] = delta_diffs[-1] / math.expm1(-interval)
    probs = np.maximum(0.0, probs)
    return pmf_lib.DensePLDPmf(interval, lower, probs, deltas[-1], True)


def _prefix_to_truncate(probs: np.ndarray, threshold: float) -> int:
    """dp-accounting's ``_find_prefix_to_truncate`` (longest prefix whose running sum stays
    <= threshold) without its Python loop: ``cumsum`` adds in the same order, so the sums,
    and the index, are the loop's."""
    over = np.flatnonzero(np.cumsum(probs) > threshold)
    return int(over[0]) if over.size else len(probs)


# Spectra of the PMFs composed last, by (array id, FFT length), each kept with its array
# (so an id is never taken for another array's): the ledger's fixed part (a training run)
# is composed with a new merged Gaussian at every probe of a search.
_SPECTRA: OrderedDict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = OrderedDict()
_SPECTRA_SIZE = 8
_SPECTRA_LOCK = threading.Lock()


def _spectrum(probs: np.ndarray, length: int) -> np.ndarray:
    key = (id(probs), length)
    with _SPECTRA_LOCK:
        hit = _SPECTRA.get(key)
        if hit is not None and hit[0] is probs:
            _SPECTRA.move_to_end(key)
            return hit[1]
    spectrum: np.ndarray = sp_fft.rfftn(probs, [length], axes=[0])
    with _SPECTRA_LOCK:
        _SPECTRA[key] = (probs, spectrum)
        while len(_SPECTRA) > _SPECTRA_SIZE:
            _SPECTRA.popitem(last=False)
    return spectrum


def _fftconvolve(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """``scipy.signal.fftconvolve(first, second)`` for two 1-D float arrays, its own steps
    (``_freq_domain_conv``: fast length, ``rfftn`` of each, product, ``irfftn``, cut to
    the full length), with the spectra reused across calls (a spectrum is a deterministic
    function of the array and the length, so the result is the same array)."""
    shape = first.shape[0] + second.shape[0] - 1
    length = sp_fft.next_fast_len(shape, True)
    product = _spectrum(first, length) * _spectrum(second, length)
    result: np.ndarray = sp_fft.irfftn(product, [length], axes=[0])
    return result[:shape]


def _compose_dense(first: pmf_lib.DensePLDPmf, second: pmf_lib.DensePLDPmf,
                   tail_mass_truncation: float) -> pmf_lib.DensePLDPmf:
    """``DensePLDPmf.compose`` (its FFT convolution, infinity mass and pessimistic tail
    truncation, operation for operation) with the spectra reused and the truncation's prefix
    search vectorised."""
    first.validate_composable(second)
    lower_loss = first._lower_loss + second._lower_loss
    if (first._probs.ndim == second._probs.ndim == 1 and first._probs.dtype == np.float64
            and second._probs.dtype == np.float64 and first._probs.size and second._probs.size):
        probs = _fftconvolve(first._probs, second._probs)
    else:
        probs = signal.fftconvolve(first._probs, second._probs)
    infinity_mass = (first._infinity_mass + second._infinity_mass
                     - first._infinity_mass * second._infinity_mass)
    offset, right_tail = 0, 0.0
    if tail_mass_truncation != 0:
        half = tail_mass_truncation / 2
        left = _prefix_to_truncate(probs, half)
        right = max(len(probs) - _prefix_to_truncate(np.flip(probs), half), left + 1)
        left_mass, right_mass = np.sum(probs[:left]), np.sum(probs[right:])
        probs = probs[left:right]
        probs[0] += left_mass
        offset, right_tail = left, right_mass
    return pmf_lib.DensePLDPmf(first._discretization, lower_loss + offset, probs,
                               infinity_mass + right_tail, first._pessimistic_estimate)


def compose(first: PLD, second: PLD, tail_mass_truncation: float = 1e-15) -> PLD:
    """``first.compose(second)``, the same PLD, with :func:`_compose_dense` for dense
    pessimistic PMFs (the ledger's: a training run and a merged Gaussian)."""
    def pmfs(remove: bool) -> pmf_lib.PLDPmf:
        a = first._pmf_remove if remove else first._pmf_add
        b = second._pmf_remove if remove else second._pmf_add
        if (type(a) is pmf_lib.DensePLDPmf and type(b) is pmf_lib.DensePLDPmf
                and a._pessimistic_estimate):
            return _compose_dense(a, b, tail_mass_truncation)
        return pmf_lib.compose_pmfs(a, b, tail_mass_truncation)

    remove = pmfs(True)
    if first._symmetric and second._symmetric:
        return pld_lib.PrivacyLossDistribution(remove)
    return pld_lib.PrivacyLossDistribution(remove, pmfs(False))


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


# Where np.log may differ from math.log (a few ulps at most): such indices are decided with
# math.log, the library's own function.
_LOG_TOLERANCE = 1e-9


def _dense_epsilon_for_delta(pmf: pmf_lib.DensePLDPmf, delta: float) -> float:
    """``DensePLDPmf.get_epsilon_for_delta`` (dp-accounting's ``_get_epsilon_for_delta``
    loop over the losses from the top) without the per-element Python loop, the same
    floats: the losses and both running masses are sequential sums (``cumsum`` adds in the
    loop's order), each ``exp`` is ``math.exp`` as in the loop, and the stopping test
    ``log((upper - delta) / lower) >= loss`` is screened with ``np.log`` and decided with
    ``math.log`` wherever the two could disagree."""
    probs = np.flip(pmf._probs)
    size = probs.size
    infinity_mass = pmf._infinity_mass
    if infinity_mass > delta:
        return math.inf
    if size < 2:
        return float(pmf.get_epsilon_for_delta(delta))
    step = -pmf._discretization
    upper_loss = (pmf._lower_loss + size - 1) * pmf._discretization
    losses = np.cumsum(np.concatenate(([upper_loss], np.full(size - 1, step))))
    # Masses before element i: upper[i], lower[i] (upper starts at the infinity mass).
    upper = np.cumsum(np.concatenate(([infinity_mass], probs)))
    # The exact exps for a prefix long enough to hold the stop (estimated with np.exp).
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        rough_lower = np.cumsum(np.concatenate(([0.0], np.exp(-losses) * probs)))
        rough_stop = _first_stop(upper, rough_lower, losses, delta, exact=False)
    prefix = min(size, rough_stop + 1024)
    while True:
        if losses[prefix - 1] < -700.0:
            # math.exp would overflow here (the library raises where its loop gets there)
            return float(pmf.get_epsilon_for_delta(delta))
        exps = np.fromiter(map(math.exp, (-losses[:prefix]).tolist()), np.float64, prefix)
        lower = np.cumsum(np.concatenate(([0.0], exps * probs[:prefix])))
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            stop = _first_stop(upper[:prefix + 1], lower, losses[:prefix], delta, exact=True)
        if stop < prefix or prefix == size:
            break
        prefix = size  # no stop in the prefix: all of it
    # The loop returns early at the first element after which the upper mass reaches delta
    # with a lower mass still 0 (exp underflowed), if that comes before the stop.
    zero = np.flatnonzero((upper[1:stop + 1] >= delta) & (lower[1:stop + 1] == 0))
    if zero.size:
        return max(0, float(losses[zero[0]]))
    mass_upper, mass_lower = float(upper[stop]), float(lower[stop])
    if mass_upper <= mass_lower + delta:
        return 0
    return math.log((mass_upper - delta) / mass_lower)


def _first_stop(upper: np.ndarray, lower: np.ndarray, losses: np.ndarray, delta: float,
                exact: bool) -> int:
    """First i where the loop stops before adding element i: upper[i] > delta, lower[i] > 0
    and log((upper[i] - delta) / lower[i]) >= losses[i]; len(losses) if none."""
    count = losses.size
    head_upper, head_lower = upper[:count], lower[:count]
    ratio = (head_upper - delta) / head_lower
    live = (head_upper > delta) & (head_lower > 0)
    logs = np.where(live, np.log(np.where(live, ratio, 1.0)), -np.inf)
    if not exact:
        found = np.flatnonzero(logs >= losses)
        return int(found[0]) if found.size else count
    # Every index where the exact test can hold (np.log within the tolerance of the loss or
    # above it), in order; the first where math.log says so is the loop's stop.
    for index in np.flatnonzero(logs >= losses - _LOG_TOLERANCE).tolist():
        value = (float(upper[index]) - delta) / float(lower[index])
        if math.log(value) >= float(losses[index]):
            return int(index)
    return count


def epsilon_for_delta(pld: PLD, delta: float) -> float:
    """``pld.get_epsilon_for_delta(delta)``, the same number, dense pessimistic PMFs
    through :func:`_dense_epsilon_for_delta`."""
    def one(pmf: pmf_lib.PLDPmf) -> float:
        if type(pmf) is pmf_lib.DensePLDPmf and pmf._probs.ndim == 1:
            return _dense_epsilon_for_delta(pmf, delta)
        return float(pmf.get_epsilon_for_delta(delta))

    epsilon_remove = one(pld._pmf_remove)
    if pld._symmetric:
        return epsilon_remove
    return max(epsilon_remove, one(pld._pmf_add))


@lru_cache(maxsize=64)
def _component_pld(component: Component, interval: float) -> PLD:
    single = component.single(interval)
    return single.self_compose(component.repetitions) if component.repetitions > 1 else single


@lru_cache(maxsize=32)
def _composed_pld(components: tuple[Component, ...], interval: float) -> PLD:
    last = _component_pld(components[-1], interval)
    if len(components) == 1:
        return last
    return compose(_composed_pld(components[:-1], interval), last)


@lru_cache(maxsize=4096)
def pld_epsilon(components: tuple[Component, ...], delta: float, interval: float) -> float:
    """Epsilon at ``delta`` of the composition of ``components`` (sorted by the caller)."""
    if not components:
        return 0.0
    return float(epsilon_for_delta(_composed_pld(components, interval), delta))

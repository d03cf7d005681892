"""The PLD speed-ups change no answer: same PLDs bit for bit, same integers as today's solver.

``reference_solver.py`` is the solver as it was before (the oracle); the shipped one must
return exactly its integers on heterogeneous ledgers, and the vectorised Gaussian PLD must
equal dp-accounting's own, array for array.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from dp_accounting.pld import pld_pmf as pmf_lib
from dp_accounting.pld import privacy_loss_distribution as pld_lib
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accounting.reference_solver import reference_epsilon, reference_max_additional
from dpserve.accounting import (
    Accountant,
    GaussianQuery,
    GNMaxQuery,
    LaplaceQuery,
    SubsampledGaussian,
)
from dpserve.accounting.events import Event, Spend
from dpserve.accounting.pld import compose, epsilon_for_delta, gaussian_pld


def _pmf_state(pld: pld_lib.PrivacyLossDistribution) -> list[tuple[object, ...]]:
    states: list[tuple[object, ...]] = []
    for pmf in (pld._pmf_remove, pld._pmf_add):
        if hasattr(pmf, "_probs"):  # dense
            content: object = (pmf._lower_loss, np.asarray(pmf._probs).tobytes())
        else:  # sparse (a few losses)
            content = sorted(pmf._loss_probs.items())
        states.append((type(pmf).__name__, pmf._discretization, pmf._infinity_mass, content))
    return states


@pytest.mark.parametrize("std", [0.3, 1.0, 1 / np.sqrt(0.73), 3.3, 25.0])
@pytest.mark.parametrize("interval", [1e-4, 1e-3])
def test_vectorised_gaussian_pld_is_the_library_pld_bit_for_bit(
    std: float, interval: float
) -> None:
    ours = gaussian_pld(float(std), interval)
    library = pld_lib.from_gaussian_mechanism(
        standard_deviation=float(std), value_discretization_interval=interval
    )
    assert _pmf_state(ours) == _pmf_state(library)
    for delta in (1e-3, 1e-6, 1e-9):
        assert ours.get_epsilon_for_delta(delta) == library.get_epsilon_for_delta(delta)


@pytest.mark.parametrize("std", [0.7, 1.0, 4.0, 300.0])
@pytest.mark.parametrize("truncation", [1e-15, 0.0, 1e-6])
def test_composition_is_the_library_composition_bit_for_bit(std: float,
                                                           truncation: float) -> None:
    """The ledger's compositions (a training run, then a merged Gaussian; Laplace; a sparse
    PMF) through the vectorised truncation equal dp-accounting's compose, array for array."""
    run = gaussian_pld(1.1, 1e-3, sampling_prob=0.05).self_compose(40)
    queries = gaussian_pld(std, 1e-3)
    laplace = pld_lib.from_laplace_mechanism(parameter=2.0, value_discretization_interval=1e-3)
    for first, second in ((run, queries), (queries, run), (run, laplace), (laplace, queries),
                          (run, run)):
        assert _pmf_state(compose(first, second, truncation)) == _pmf_state(
            first.compose(second, truncation))
    composed = compose(run, queries)
    assert composed.get_epsilon_for_delta(1e-6) == run.compose(queries).get_epsilon_for_delta(
        1e-6)


@pytest.mark.parametrize("delta", [1e-3, 1e-6, 1e-9, 1e-12, 0.5, 1e-20])
def test_epsilon_for_delta_is_the_library_number(delta: float) -> None:
    """The vectorised epsilon of dense PMFs is the library loop's float, on the ledger's
    compositions, a lone Gaussian, heavy and light noise and deltas from loose to tiny."""
    run = gaussian_pld(1.1, 1e-3, sampling_prob=0.05).self_compose(40)
    plds = [run, compose(run, gaussian_pld(1.0, 1e-3)), compose(run, gaussian_pld(30.0, 1e-3)),
            gaussian_pld(0.5, 1e-4), gaussian_pld(2.0, 1e-4), gaussian_pld(1.0, 1e-3),
            pld_lib.from_laplace_mechanism(parameter=0.5, value_discretization_interval=1e-3),
            compose(run, run)]
    for pld in plds:
        assert epsilon_for_delta(pld, delta) == pld.get_epsilon_for_delta(delta)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 2**32 - 1), size=st.integers(2, 4000),
    lower=st.integers(-6000, 6000), interval=st.sampled_from([1e-4, 1e-3, 1e-2]),
    infinity=st.sampled_from([0.0, 1e-12, 1e-7, 1e-4]),
    delta=st.sampled_from([1e-2, 1e-5, 1e-7, 1e-10, 1e-13]),
)
def test_epsilon_for_delta_is_the_library_number_on_random_pmfs(
    seed: int, size: int, lower: int, interval: float, infinity: float, delta: float
) -> None:
    rng = np.random.default_rng(seed)  # test data, not privacy noise
    probs = rng.exponential(size=size) ** rng.choice([1.0, 4.0])
    probs *= (1 - infinity) / probs.sum()
    pmf = pmf_lib.DensePLDPmf(interval, lower, probs, infinity, True)
    pld = pld_lib.PrivacyLossDistribution(pmf)
    assert epsilon_for_delta(pld, delta) == pld.get_epsilon_for_delta(delta)


@pytest.mark.parametrize(
    ("std", "sampling_prob", "interval"),
    [(1.1, 0.01, 1e-3), (1.1, 256 / 60000, 1e-4), (0.5, 0.3, 1e-3), (0.8, 0.001, 1e-4),
     (3.0, 0.05, 1e-4), (1.0, 0.999, 1e-3), (25.0, 0.2, 1e-4), (0.3, 1e-5, 1e-3)],
)
def test_vectorised_subsampled_gaussian_pld_is_the_library_pld_bit_for_bit(
    std: float, sampling_prob: float, interval: float
) -> None:
    """A DP-SGD run's PLD (both adjacencies, Poisson subsampling) through the vectorised
    inverse loss equals dp-accounting's, array for array."""
    ours = gaussian_pld(std, interval, sampling_prob=sampling_prob)
    library = pld_lib.from_gaussian_mechanism(
        standard_deviation=std, sampling_prob=sampling_prob,
        value_discretization_interval=interval,
    )
    assert _pmf_state(ours) == _pmf_state(library)


@settings(max_examples=25, deadline=None)
@given(std=st.floats(0.4, 40.0), sampling_prob=st.floats(1e-4, 0.9))
def test_vectorised_subsampled_divergences_are_the_library_ones(
    std: float, sampling_prob: float
) -> None:
    """The hockey-stick divergences at every grid point, on random mechanisms and on epsilons
    at and around the edges of the subsampled loss's range (±log(1 - q), 0)."""
    from dp_accounting.pld import privacy_loss_mechanism as loss_lib

    from dpserve.accounting.pld import _VectorizedGaussianLoss

    edge = math.log(1 - sampling_prob)
    grid = np.concatenate([
        np.arange(-3000, 3001) * 1e-3,
        np.array([edge, -edge, math.log1p(-sampling_prob), -math.log1p(-sampling_prob),
                  0.0, -0.0]),
        np.nextafter(np.array([edge, -edge]), np.inf),
        np.nextafter(np.array([edge, -edge]), -np.inf),
        edge * (1 + np.array([1e-10, -1e-10, 2e-9, -2e-9])),
    ])
    for adjacency in (loss_lib.AdjacencyType.REMOVE, loss_lib.AdjacencyType.ADD):
        kwargs = dict(sensitivity=1, pessimistic_estimate=True, log_mass_truncation_bound=-50,
                      sampling_prob=sampling_prob, adjacency_type=adjacency)
        ours = _VectorizedGaussianLoss(std, **kwargs).get_delta_for_epsilon(grid)
        library = loss_lib.GaussianPrivacyLoss(std, **kwargs).get_delta_for_epsilon(grid)
        assert ours.tobytes() == library.tobytes()


# Small parameters keep each PLD cheap (the property is about the search, not the size).
_poisson = st.builds(
    SubsampledGaussian,
    st.sampled_from([0.8, 1.1, 2.0]),
    st.sampled_from([0.01, 0.05]),
    st.integers(1, 60),
    st.sampled_from(["poisson", "poisson", "shuffle", "without-replacement"]),
)
_queries = st.one_of(
    st.builds(GaussianQuery, st.sampled_from([3.0, 8.0, 20.0])),
    st.builds(GNMaxQuery, st.sampled_from([10.0, 40.0])),
    st.builds(LaplaceQuery, st.sampled_from([0.05, 0.3])),
)
_spend = st.tuples(st.one_of(_poisson, _queries), st.integers(0, 40))


@settings(
    max_examples=30, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    spends=st.lists(_spend, max_size=3),
    event=_queries,
    epsilon=st.floats(0.5, 6.0),
    delta=st.sampled_from([1e-5, 1e-7]),
    kind=st.sampled_from(["pld", "pld", "rdp"]),
)
def test_max_additional_returns_todays_integers(
    spends: list[Spend], event: Event, epsilon: float, delta: float, kind: str
) -> None:
    accountant = Accountant(kind)  # type: ignore[arg-type]
    expected = reference_max_additional(spends, event, epsilon, delta, kind)
    assert accountant.max_additional(spends, event, epsilon, delta) == expected
    assert accountant.epsilon(spends, delta) == reference_epsilon(spends, delta, kind)


@pytest.mark.slow
def test_the_mnist_run_plus_ten_thousand_queries_gets_todays_answers() -> None:
    run = SubsampledGaussian(1.1, 256 / 60000, 14063)
    query = GaussianQuery(100.0)
    accountant = Accountant("pld")
    for count in (10_000, 10_500, 15_000):
        spends: list[Spend] = [(run, 1), (query, count)]
        assert accountant.epsilon(spends, 1e-6) == reference_epsilon(spends, 1e-6)
        for budget in (6.0, 8.0):
            assert accountant.max_additional(spends, query, budget, 1e-6) == (
                reference_max_additional(spends, query, budget, 1e-6)
            )

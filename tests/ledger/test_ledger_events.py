"""API objects -> accounting events."""

from __future__ import annotations

import math
from typing import get_args

import pytest
from ledger_helpers import GAUSS, LAPLACE, PATE, mechanism

from dpserve.accounting.events import (
    MECHANISM_EVENTS,
    GaussianQuery,
    GNMaxQuery,
    LaplaceQuery,
    SubsampledGaussian,
)
from dpserve.api.mechanism import Mechanism, MechanismType
from dpserve.api.privacybudget import LedgerEntry, TrainingSpend
from dpserve.api.privatemodel import DeclaredTraining
from dpserve.ledger import events as ev


def test_pate_is_gnmax_with_the_vote_noise() -> None:
    event = ev.mechanism_event(mechanism(PATE))
    assert event == GNMaxQuery(sigma=40.0)
    assert isinstance(event, GNMaxQuery)
    assert event.noise_multiplier == pytest.approx(40 / math.sqrt(2))


def test_gaussian_noise_multiplier_is_scaled_by_clip_over_sensitivity() -> None:
    # noise std = 2 * 1 = 2; one record moves the output by 0.02 -> z = 100
    assert ev.mechanism_event(mechanism(GAUSS)) == GaussianQuery(noise_multiplier=100.0)
    wide = mechanism({**GAUSS, "clipNorm": "3", "sensitivity": "1.5"})
    assert ev.mechanism_event(wide) == GaussianQuery(noise_multiplier=4.0)


def test_laplace_and_none() -> None:
    assert ev.mechanism_event(mechanism(LAPLACE)) == LaplaceQuery(epsilon=0.5)
    assert ev.mechanism_event(Mechanism()) is None
    assert ev.is_tenant_side(mechanism(LAPLACE))
    assert not ev.is_tenant_side(mechanism(PATE))


@pytest.mark.parametrize(
    ("wire", "field"),
    [
        ({"type": "pate", "teachers": 5}, "mechanism.noiseMultiplier"),
        ({"type": "gaussian", "noiseMultiplier": "1", "clipNorm": "1"}, "mechanism.sensitivity"),
        ({"type": "laplace-embedding"}, "mechanism.epsilon"),
        ({"type": "pate", "teachers": 5, "noiseMultiplier": "0"}, "mechanism.noiseMultiplier"),
    ],
)
def test_missing_or_bad_parameters_name_the_field(wire: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        ev.mechanism_event(Mechanism.model_validate(wire))


def test_training_keeps_its_sampling_scheme() -> None:
    declared = DeclaredTraining(
        noise_multiplier="1.1", sample_rate="0.01", steps=1000, sampling="shuffle"
    )
    spend = ev.training_spend(declared)
    assert spend == TrainingSpend(
        noise_multiplier="1.1", sample_rate="0.01", steps=1000, sampling="shuffle"
    )
    assert ev.training_event(spend) == SubsampledGaussian(1.1, 0.01, 1000, "shuffle")


def test_entries_merge_into_spends_and_free_entries_drop() -> None:
    pate = mechanism(PATE)
    entries = [
        LedgerEntry(consumer="a/m", kind="query", mechanism=pate, count=3),
        LedgerEntry(consumer="a/n", model_version="v2", kind="query", mechanism=pate, count=4),
        LedgerEntry(consumer="a/f", kind="query", mechanism=Mechanism(), count=99),
        LedgerEntry(consumer="a/z", kind="query", mechanism=mechanism(LAPLACE), count=0),
        LedgerEntry(
            consumer="a/m",
            kind="training",
            training=TrainingSpend(noise_multiplier="1", sample_rate="0.1", steps=10),
            count=1,
        ),
    ]
    spends = dict(ev.spends(entries))
    assert spends == {GNMaxQuery(40.0): 7, SubsampledGaussian(1.0, 0.1, 10, "poisson"): 1}


def test_canonical_mechanism_compares_decimals_by_value() -> None:
    a = mechanism(PATE)
    b = mechanism({**PATE, "noiseMultiplier": "40.0"})
    c = mechanism({**PATE, "noiseMultiplier": "4e1"})
    d = mechanism({**PATE, "noiseMultiplier": "41"})
    assert ev.canonical_mechanism(a) == ev.canonical_mechanism(b) == ev.canonical_mechanism(c)
    assert ev.canonical_mechanism(a) != ev.canonical_mechanism(d)
    assert ev.canonical_mechanism(a) != ev.canonical_mechanism(mechanism({**PATE, "teachers": 9}))


@pytest.mark.parametrize(
    ("text", "word"),
    [("1e-400", "underflows"), ("1e-310", "underflows"), ("1e400", "overflows")],
)
def test_a_decimal_outside_the_float_range_is_refused_not_rounded(text: str, word: str) -> None:
    # 1e-400 used to become 0.0 (and 1e400 inf) without a word.
    with pytest.raises(ValueError, match=rf"spec\.delta: '{text}' {word} a float"):
        ev.decimal_value(text, "spec.delta")
    assert ev.decimal_value("2.5e-308", "x") == 2.5e-308  # the smallest normals still pass


def test_an_underflowing_mechanism_field_names_the_field() -> None:
    # As a spec that skipped admission holds it (the schema bounds sensitivity >= 1e-6).
    unadmitted = Mechanism.model_construct(
        type="gaussian", noise_multiplier="2", clip_norm="1", sensitivity="1e-400"
    )
    with pytest.raises(ValueError, match=r"ledger\.mechanism\.sensitivity: '1e-400' underflows"):
        ev.mechanism_event(unadmitted, "ledger.mechanism")


def test_every_charged_api_mechanism_has_one_event_class() -> None:
    """The API's mechanism types and the accounting's registry cannot drift apart."""
    types = set(get_args(MechanismType))
    assert set(MECHANISM_EVENTS) == types - {"none"}
    for kind, event_class in MECHANISM_EVENTS.items():
        assert event_class.mechanism == kind

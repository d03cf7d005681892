"""Privacy units: a query's spend goes to the ledger of whom its noise protects.

A training record's spend (DP-SGD, pate, dataset-side gaussian) goes to the budget's main
ledger; a tenant's query text (laplace-embedding, gaussian with privacyUnit query-text) to that
tenant's partition. Neither is ever debited from the other's ledger.
"""

from __future__ import annotations

from typing import Any

import pytest
from ledger_helpers import GAUSS, LAPLACE, NS, PATE, T0, mechanism, spec

from dpserve.api.mechanism import privacy_unit
from dpserve.ledger import events as ev
from dpserve.ledger import state
from dpserve.ledger.accountant import LedgerAccounting

GAUSS_QUERY: dict[str, Any] = {
    "type": "gaussian", "noiseMultiplier": "2", "clipNorm": "1", "sensitivity": "2",
    "privacyUnit": "query-text",
}
BIG = state.LeasePolicy(at_risk_fraction=1.0)


@pytest.mark.parametrize(
    ("wire", "unit"),
    [
        ({"type": "none"}, "training-record"),
        (PATE, "training-record"),
        (GAUSS, "training-record"),
        ({**GAUSS, "privacyUnit": "training-record"}, "training-record"),
        (GAUSS_QUERY, "query-text"),
        (LAPLACE, "query-text"),
        ({**LAPLACE, "privacyUnit": "query-text"}, "query-text"),
    ],
)
def test_privacy_unit_and_side(wire: dict[str, Any], unit: str) -> None:
    m = mechanism(wire)
    assert privacy_unit(m) == unit
    assert ev.is_tenant_side(m) == (unit == "query-text" and wire["type"] != "none")


def test_a_stated_default_unit_is_the_same_mechanism() -> None:
    # The ledger's MechanismMismatch check and its entries compare canonical forms.
    assert ev.canonical_mechanism(mechanism(LAPLACE)) == ev.canonical_mechanism(
        mechanism({**LAPLACE, "privacyUnit": "query-text"}))
    assert ev.canonical_mechanism(mechanism(GAUSS)) != ev.canonical_mechanism(
        mechanism({**GAUSS, "privacyUnit": "query-text"}))


def test_the_unit_does_not_change_the_noise_event() -> None:
    # Same noise, same per-query DP event: only the ledger that pays differs.
    assert ev.mechanism_event(mechanism(GAUSS_QUERY)) == ev.mechanism_event(
        mechanism({**GAUSS_QUERY, "privacyUnit": "training-record"}))


def _request(lease_id: str, wire: dict[str, Any], partition: str | None) -> state.GrantRequest:
    return state.GrantRequest(
        consumer=f"{NS}/embedder", model_version="v1", mechanism=mechanism(wire),
        requested=5, lease_id=lease_id, pod="embedder-0", partition=partition,
    )


def test_query_text_gaussian_is_charged_to_the_tenant_never_the_dataset(
    accounting: LedgerAccounting,
) -> None:
    budget = spec(partitions={"header": "X-Tenant", "epsilon": "50"})
    result = state.grant(budget, 1, None, _request("lease-q-0001", GAUSS_QUERY, "acme"), T0,
                         accounting=accounting, policy=BIG)
    assert isinstance(result, state.Grant), result
    assert result.lease.partition == "acme"
    assert result.status.epsilon_spent == "0"  # the dataset's ledger is untouched
    [entry] = result.status.ledger
    assert entry.partition == "acme" and entry.count == 5
    [row] = result.status.partitions
    assert row.tenant == "acme" and float(row.epsilon_spent) > 0
    missing = state.grant(budget, 1, result.status, _request("lease-q-0002", GAUSS_QUERY, None),
                          T0, accounting=accounting, policy=BIG)
    assert isinstance(missing, state.Refusal) and missing.reason == "BadRequest"


def test_dataset_side_gaussian_is_charged_to_the_dataset_whatever_the_header(
    accounting: LedgerAccounting,
) -> None:
    budget = spec(partitions={"header": "X-Tenant", "epsilon": "50"})
    result = state.grant(budget, 1, None, _request("lease-d-0001", GAUSS, "acme"), T0,
                         accounting=accounting, policy=BIG)
    assert isinstance(result, state.Grant), result
    assert result.lease.partition is None
    assert float(result.status.epsilon_spent or "0") > 0
    assert [e.partition for e in result.status.ledger] == [None]
    assert result.status.partitions == []

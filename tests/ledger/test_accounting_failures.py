"""Numbers the accountant cannot evaluate become a clear condition, never a crash loop.

The schema now refuses such numbers (tests/api/invalid/, tests/api/test_decimal_bounds.py);
these tests feed them past admission (``model_construct``: a cluster that skipped CRD
validation, a ledger entry written before the bounds) and check every place that calls the
accountant: the budget's status, a lease grant, a training charge, the PrivateModel
controller's "does one more query fit" and the budget controller's probes.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest
from ledger_helpers import T0, spec

from dpserve.accounting.events import GaussianQuery, GNMaxQuery
from dpserve.api.mechanism import Mechanism
from dpserve.api.privacybudget import LedgerEntry, PrivacyBudgetStatus, TrainingSpend
from dpserve.controllers import budget as budget_controller
from dpserve.controllers import model as model_controller
from dpserve.ledger import events as ev
from dpserve.ledger import state
from dpserve.ledger.accountant import LedgerAccounting
from dpserve.ledger.conditions import get_condition

CONSUMER = "default/triage"

# What used to be admitted, as each field of the mechanism.
UNEVALUABLE: dict[str, dict[str, Any]] = {
    # 1e-300 ** 2 underflows: RDP alpha / (2 z^2) divides by zero.
    "pate-noise-1e-300": {"type": "pate", "teachers": 50, "noise_multiplier": "1e-300"},
    # z = 8 * 1 / 1e308 underflows the same way.
    "gaussian-sensitivity-1e308": {
        "type": "gaussian", "noise_multiplier": "8", "clip_norm": "1", "sensitivity": "1e308",
    },
    # z = 1e-160: z^2 is subnormal, RDP is inf (the status used to read "exhausted").
    "gaussian-noise-1e-160": {
        "type": "gaussian", "noise_multiplier": "1e-160", "clip_norm": "1", "sensitivity": "1",
    },
    # 1e-400 is a positive decimal whose float is 0.0: the event divides by zero.
    "gaussian-sensitivity-1e-400": {
        "type": "gaussian", "noise_multiplier": "8", "clip_norm": "1", "sensitivity": "1e-400",
    },
}


def unadmitted(fields: dict[str, Any]) -> Mechanism:
    """The mechanism as a spec that skipped admission holds it (no validation)."""
    return Mechanism.model_construct(**fields)


def query_entry(mechanism: Mechanism, count: int = 3) -> LedgerEntry:
    return LedgerEntry.model_construct(
        consumer=CONSUMER, model_version="v1", kind="query", mechanism=mechanism,
        training=None, partition=None, count=count, run=None,
    )


def test_the_accountant_itself_fails_on_these_numbers() -> None:
    """The reproduction: what the accountant does with them (why the schema bounds them)."""
    accounting = LedgerAccounting()
    with pytest.raises(ZeroDivisionError):
        accounting.epsilon([(GNMaxQuery(1e-300), 1)], 1e-6, "rdp")
    assert accounting.epsilon([(GaussianQuery(1e-160), 1)], 1e-6, "rdp") == float("inf")


@pytest.mark.parametrize("name", sorted(UNEVALUABLE))
def test_budget_status_says_accounting_failed_not_exhausted(name: str) -> None:
    entry = query_entry(unadmitted(UNEVALUABLE[name]))
    previous = PrivacyBudgetStatus.model_construct(**{
        **PrivacyBudgetStatus().__dict__, "ledger": [entry],
    })
    update = state.compute_status(spec(), 1, previous, T0, accounting=LedgerAccounting())

    ready = get_condition(update.status.conditions, state.READY)
    exhausted = get_condition(update.status.conditions, state.EXHAUSTED)
    assert ready is not None and ready.status == "False"
    assert ready.reason == "AccountingFailed"
    assert "the accountant cannot evaluate" in ready.message
    assert exhausted is not None and exhausted.status == "Unknown"  # never claimed exhausted
    assert [(e.type, e.reason) for e in update.events] == [("Warning", "AccountingFailed")]
    assert update.status.ledger == [entry]  # the recorded spend is kept

    # The next reconcile: same condition, no second Event.
    again = state.compute_status(spec(), 1, update.status, T0, accounting=LedgerAccounting())
    assert get_condition(again.status.conditions, state.READY) == ready
    assert again.events == ()


def test_a_probe_the_accountant_cannot_evaluate_is_a_condition() -> None:
    update = state.compute_status(
        spec(), 1, None, T0, accounting=LedgerAccounting(), probes=[GNMaxQuery(1e-300)]
    )
    ready = get_condition(update.status.conditions, state.READY)
    assert ready is not None and ready.reason == "AccountingFailed"
    assert "ZeroDivisionError" in ready.message


@pytest.mark.parametrize("name", sorted(UNEVALUABLE))
def test_grant_refuses_as_unavailable(name: str) -> None:
    request = state.GrantRequest(
        consumer=CONSUMER, model_version="v1", mechanism=unadmitted(UNEVALUABLE[name]),
        requested=10, lease_id="lease-1", pod="triage-0",
    )
    result = state.grant(spec(), 1, None, request, T0, accounting=LedgerAccounting())
    assert isinstance(result, state.Refusal), result
    assert result.reason == "Unavailable"
    assert "invalid" in result.message or "accounting failed" in result.message


def test_training_charge_refuses_as_unavailable() -> None:
    spend = TrainingSpend.model_construct(
        noise_multiplier="1e-300", sample_rate="0.01", steps=100, sampling="poisson"
    )
    result = state.record_training(
        spec(), 1, None, consumer=CONSUMER, model_version="v1", spend=spend, now=T0,
        accounting=LedgerAccounting(),
    )
    assert isinstance(result, state.Refusal), result
    assert result.reason == "Unavailable"
    assert "ZeroDivisionError" in result.message


@pytest.mark.parametrize("name", sorted(UNEVALUABLE))
def test_query_fits_raises_a_value_error_naming_the_failure(name: str) -> None:
    with pytest.raises(ValueError):
        state.query_fits(spec(), None, unadmitted(UNEVALUABLE[name]),
                         accounting=LedgerAccounting())


@pytest.mark.parametrize("name", sorted(UNEVALUABLE))
def test_model_controller_reports_accounting_failed(name: str) -> None:
    mechanism = unadmitted(UNEVALUABLE[name])
    model = SimpleNamespace(spec=SimpleNamespace(serving=SimpleNamespace(mechanism=mechanism)))
    view = model_controller.BudgetView("patients", {}, spec=spec(), status=None)
    ctx = SimpleNamespace(accounting=LedgerAccounting())

    fits = model_controller._fits(cast(Any, ctx), cast(Any, model), view)

    assert fits is False
    assert view.problem is not None
    reason, message = view.problem
    assert reason == "AccountingFailed"
    assert "PrivacyBudget patients" in message and mechanism.type in message


def test_budget_controller_skips_a_probe_it_cannot_build() -> None:
    wires = [
        {"type": "gaussian", "noiseMultiplier": "8", "clipNorm": "1", "sensitivity": "1e-400"},
        {"type": "pate", "teachers": 50, "noiseMultiplier": "40"},
    ]
    assert budget_controller.probes(wires) == [GNMaxQuery(40.0)]


def test_an_admissible_mechanism_still_gets_a_real_answer() -> None:
    """The failure handling does not swallow ordinary exhaustion."""
    pate = Mechanism.model_validate({"type": "pate", "teachers": 50, "noiseMultiplier": "0.01"})
    event = ev.mechanism_event(pate)
    assert event is not None
    # One query with vote noise 0.01 costs far more than ε = 8: exhausted, not a failure.
    assert state.query_fits(spec(), None, pate, accounting=LedgerAccounting()) is False


def test_query_fits_with_an_unevaluable_ledger_entry_is_not_exhaustion() -> None:
    entry = query_entry(unadmitted(UNEVALUABLE["gaussian-noise-1e-160"]))
    status = PrivacyBudgetStatus.model_construct(**{
        **PrivacyBudgetStatus().__dict__, "ledger": [entry],
    })
    pate = Mechanism.model_validate({"type": "pate", "teachers": 50, "noiseMultiplier": "40"})
    with pytest.raises(ValueError, match="returned ε"):
        state.query_fits(spec(), status, pate, accounting=LedgerAccounting())

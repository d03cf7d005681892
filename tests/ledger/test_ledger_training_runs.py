"""Every retraining run that touched the data is charged (issue 12, item 5).

A retraining Job's run is recorded with its Job uid: the same run is charged once, a
different run of an already recorded version is charged too (never silently dropped).
"""

from __future__ import annotations

from ledger_helpers import NS, T0, spec

from dpserve.api.privacybudget import PrivacyBudgetStatus, TrainingSpend
from dpserve.ledger import state
from dpserve.ledger.accountant import LedgerAccounting

CONSUMER = f"{NS}/triage"
SGD = TrainingSpend(noise_multiplier="1.1", sample_rate="0.01", steps=1000)
OTHER = SGD.model_copy(update={"steps": 500})


def _record(accounting: LedgerAccounting, status: PrivacyBudgetStatus | None,
            spend: TrainingSpend, run: str | None) -> state.TrainingRecorded:
    out = state.record_training(spec(), 1, status, consumer=CONSUMER, model_version="v2",
                                spend=spend, now=T0, accounting=accounting, run=run)
    assert isinstance(out, state.TrainingRecorded)
    return out


def test_a_second_run_of_a_version_is_charged_too(accounting: LedgerAccounting) -> None:
    first = _record(accounting, None, SGD, "job-uid-1")
    assert first.changed and first.earlier_runs == ()
    retried = _record(accounting, first.status, SGD, "job-uid-1")  # the same Job again
    assert not retried.changed and retried.existing is None
    second = _record(accounting, first.status, OTHER, "job-uid-2")
    assert second.changed and second.earlier_runs == (SGD,)
    runs = [(e.run, e.training) for e in second.status.ledger if e.kind == "training"]
    assert runs == [("job-uid-1", SGD), ("job-uid-2", OTHER)]
    assert float(second.status.epsilon_spent or 0) > float(first.status.epsilon_spent or 0)
    # Identical parameters, another Job: another release of the data, charged again.
    third = _record(accounting, second.status, SGD, "job-uid-3")
    assert third.changed and len(third.earlier_runs) == 2


def test_the_same_run_with_other_parameters_keeps_its_record(
    accounting: LedgerAccounting,
) -> None:
    first = _record(accounting, None, SGD, "job-uid-1")
    again = _record(accounting, first.status, OTHER, "job-uid-1")
    assert (again.changed, again.existing) == (False, SGD)


def test_without_a_run_the_first_record_still_wins(accounting: LedgerAccounting) -> None:
    first = _record(accounting, None, SGD, None)
    other = _record(accounting, first.status, OTHER, None)
    assert (other.changed, other.existing) == (False, SGD)

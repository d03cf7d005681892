""""Does one more query of this model fit?": the PrivateModel controller's question."""

from __future__ import annotations

from dpserve.api.mechanism import Mechanism
from dpserve.api.privacybudget import PrivacyBudgetSpec, PrivacyBudgetStatus
from dpserve.ledger import events as ev
from dpserve.ledger.accountant import Accounting
from dpserve.ledger.entries import on_ledger
from dpserve.ledger.evaluation import accounting_message, evaluable, ledger_epsilon
from dpserve.ledger.limits import Limits


def query_fits(
    spec: PrivacyBudgetSpec,
    status: PrivacyBudgetStatus | None,
    mechanism: Mechanism,
    *,
    accounting: Accounting,
    partition: str | None = None,
) -> bool:
    """Whether one more query of ``mechanism`` fits (the PrivateModel controller's question).

    A spec or spend the accountant cannot evaluate raises a ValueError saying so (never a
    bare ZeroDivisionError or OverflowError): the caller turns it into a condition.
    """
    try:
        return _query_fits(spec, status, mechanism, accounting, partition)
    except ArithmeticError as exc:
        raise ValueError(f"accounting failed: {accounting_message(exc)}") from exc


def _query_fits(
    spec: PrivacyBudgetSpec,
    status: PrivacyBudgetStatus | None,
    mechanism: Mechanism,
    accounting: Accounting,
    partition: str | None,
) -> bool:
    limits = Limits.from_spec(spec)
    event = ev.mechanism_event(mechanism)
    if event is None:
        return True
    entries = status.ledger if status is not None else []
    limit = limits.epsilon
    target: str | None = None
    if ev.is_tenant_side(mechanism):
        if not limits.partition_epsilon:
            return False  # never charged to the dataset's ledger: no partitions, no query fits
        if partition is not None:
            target, limit = partition, limits.partition_epsilon
    spends = ev.spends(on_ledger(entries, target))
    event = evaluable(event, limits, accounting)
    if accounting.max_additional(spends, event, limit, limits.delta, limits.kind, 1) >= 1:
        return True
    # "Exhausted" only when the spend so far is a number (an unevaluable ledger entry is not).
    ledger_epsilon(spends, limits, accounting)
    return False

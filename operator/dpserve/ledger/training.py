"""Charging DP-SGD training runs to the main ledger, each run once."""

from __future__ import annotations

from datetime import datetime

from dpserve.api.privacybudget import (
    LedgerEntry,
    PrivacyBudgetSpec,
    PrivacyBudgetStatus,
    TrainingSpend,
)
from dpserve.ledger import events as ev
from dpserve.ledger.accountant import Accounting
from dpserve.ledger.entries import on_ledger, training_entry
from dpserve.ledger.evaluation import ACCOUNTING_ERRORS, accounting_message, ledger_epsilon
from dpserve.ledger.limits import Limits
from dpserve.ledger.outcomes import Refusal, TrainingRecorded
from dpserve.ledger.rounding import format_up, remaining
from dpserve.ledger.status import compute_status


def charge_training(
    limits: Limits,
    entries: list[LedgerEntry],
    consumer: str,
    version: str,
    spend: TrainingSpend,
    accounting: Accounting,
    run: str | None = None,
) -> list[LedgerEntry] | Refusal:
    """``entries`` with the run appended, or a Refusal when it does not fit (or the
    accountant cannot evaluate it)."""
    entry = LedgerEntry(
        consumer=consumer, model_version=version, kind="training", training=spend, count=1,
        run=run,
    )
    main = on_ledger(entries, None)
    try:
        after = ledger_epsilon(ev.spends([*main, entry]), limits, accounting, "training")
        before = ledger_epsilon(ev.spends(main), limits, accounting) if after > limits.epsilon \
            else 0.0
    except ACCOUNTING_ERRORS as exc:
        return Refusal("Unavailable", f"accounting failed: {accounting_message(exc)}")
    if after > limits.epsilon:
        return Refusal(
            "BudgetExhausted",
            f"the DP-SGD run of {consumer} {version} costs more than remains: ε would be "
            f"{format_up(after)} of {limits.epsilon_text}",
            epsilon_spent=float(format_up(before)),
            epsilon_remaining=float(remaining(limits.epsilon_text, before)),
        )
    return [*entries, entry]


def record_training(
    spec: PrivacyBudgetSpec,
    generation: int | None,
    status: PrivacyBudgetStatus | None,
    *,
    consumer: str,
    model_version: str,
    spend: TrainingSpend,
    now: datetime,
    accounting: Accounting,
    run: str | None = None,
) -> TrainingRecorded | Refusal:
    """Charge one DP-SGD run of ``consumer``'s ``model_version`` once (idempotent).

    Without ``run`` (the model's declared training): a run already recorded for that
    version is never charged again; if the recorded run differs from ``spend``, it is kept
    (first wins) and reported in ``existing``. With ``run`` (a retraining Job's uid): the
    same run is charged once; a *different* run of the same version is charged too (it
    trained on the data as well) and the earlier differing runs are reported in
    ``earlier_runs``.
    """
    previous = status if status is not None else PrivacyBudgetStatus()
    recorded = _already_recorded(previous, consumer, model_version, spend, run)
    if isinstance(recorded, TrainingRecorded):
        return recorded
    try:
        limits = Limits.from_spec(spec)
    except ValueError as exc:
        return Refusal("Unavailable", f"the budget spec is invalid: {exc}")
    charged = charge_training(
        limits, list(previous.ledger), consumer, model_version, spend, accounting, run
    )
    if isinstance(charged, Refusal):
        return charged
    update = compute_status(
        spec,
        generation,
        previous.model_copy(update={"ledger": charged}),
        now,
        accounting=accounting,
    )
    return TrainingRecorded(update.status, changed=True, events=update.events,
                            earlier_runs=recorded)


def _already_recorded(
    previous: PrivacyBudgetStatus,
    consumer: str,
    version: str,
    spend: TrainingSpend,
    run: str | None,
) -> TrainingRecorded | tuple[TrainingSpend, ...]:
    """The unchanged answer when this run is on the ledger already; else the earlier
    differing runs of the version (with a run id; empty without)."""
    if run is None:
        found = training_entry(previous.ledger, consumer, version)
        if found is None:
            return ()
        same = found.training is not None and _same(found.training, spend)
        return TrainingRecorded(previous, changed=False,
                                existing=None if same else found.training)
    runs = [e for e in previous.ledger if e.kind == "training" and e.consumer == consumer
            and e.model_version == version and e.training is not None]
    mine = next((e for e in runs if e.run == run), None)
    if mine is not None:
        assert mine.training is not None
        return TrainingRecorded(previous, changed=False,
                                existing=None if _same(mine.training, spend) else mine.training)
    return tuple(e.training for e in runs if e.training is not None)


def _same(recorded: TrainingSpend, spend: TrainingSpend) -> bool:
    return ev.training_event(recorded) == ev.training_event(spend)

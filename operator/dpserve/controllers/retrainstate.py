"""The retraining decisions, as pure functions (no API calls): tested as tables.

What :mod:`dpserve.controllers.retrain` does with a Job is decided here from what it read:
whether the next budget may pay for version N+1, what a finished or failed Job means
(attempts, back-off, give-up), how the retired versions are kept and how the lifetime ε
of the model is summed. The caller performs the API calls the decision names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from dpserve.api.privacybudget import PrivacyBudgetStatus
from dpserve.api.privatemodel import VersionRecord
from dpserve.ledger.rounding import format_up

Obj = dict[str, Any]
MAX_VERSIONS = 64  # status.versions keeps the latest retired versions (the CRD's maxItems)

NEXT_BUDGET_SPENT = "NextBudgetSpent"
NEXT_BUDGET_EXHAUSTED = "NextBudgetExhausted"


@dataclass(frozen=True)
class Refusal:
    reason: str
    message: str


def next_budget_refusal(
    *, next_name: str, version: str, current_budget: str, current_version: str,
    retired: Sequence[VersionRecord], consumer: str,
    next_status: PrivacyBudgetStatus | None, next_fits: bool | None,
) -> Refusal | None:
    """Why ``next_name`` must not pay for ``version``, or None when it may.

    A retrain moves the model onto a budget over a *new* data window. A budget that this
    model's current or an earlier version already spent (a fixed ``nextBudget.name`` reused
    retrain after retrain) would be counted again for every version: the retrain would loop
    on an exhausted budget and the lifetime ε would count it each time. An exhausted budget
    cannot pay for the new version either. ``next_fits`` is None when the budget does not
    exist yet (it will be created fresh).
    """
    fix = ("name a fresh budget in spec.retraining.nextBudget.name, or remove the name to "
           "get a per-version budget (<budget>-<version>)")
    if next_name == current_budget:
        return Refusal(NEXT_BUDGET_SPENT,
                       f"spec.retraining.nextBudget.name {next_name} is the budget "
                       f"{current_version} already spends; {version} is not trained: {fix}")
    for record in retired:
        if record.budget == next_name:
            return Refusal(NEXT_BUDGET_SPENT,
                           f"spec.retraining.nextBudget.name {next_name} was already spent "
                           f"by version {record.version}; {version} is not trained: {fix}")
    if next_status is not None:
        others = sorted({e.model_version or "?" for e in next_status.ledger
                         if e.consumer == consumer and e.model_version != version})
        if others:
            return Refusal(NEXT_BUDGET_SPENT,
                           f"PrivacyBudget {next_name} already holds spend of {consumer} "
                           f"version(s) {', '.join(others)}; {version} is not trained: {fix}")
    if next_fits is False:
        return Refusal(NEXT_BUDGET_EXHAUSTED,
                       f"PrivacyBudget {next_name} (spec.retraining.nextBudget.name) is "
                       f"exhausted; {version} is not trained: {fix}")
    return None


# ------------------------------------------------------------------ the Job's outcome

JobState = Literal["Absent", "Running", "Complete", "Failed"]


def job_state(job: Obj | None) -> JobState:
    if job is None:
        return "Absent"
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("status") != "True":
            continue
        if cond.get("type") in ("Complete", "SuccessCriteriaMet"):
            return "Complete"
        if cond.get("type") in ("Failed", "FailureTarget"):
            return "Failed"
    return "Running"


def job_failure_message(job: Obj, job_name: str) -> str:
    return f"Job {job_name} failed: " + "; ".join(
        c.get("message", c.get("reason", "")) for c in
        (job.get("status") or {}).get("conditions") or [] if c.get("status") == "True"
    )


def backoff_s(base_s: float, attempts: int) -> float:
    """Exponential back-off after ``attempts`` failed attempts: base, 2·base, 4·base, ..."""
    return float(base_s * 2 ** max(attempts - 1, 0))


@dataclass(frozen=True)
class StartDecision:
    """What to do when no Job exists for the next version."""

    action: Literal["give-up", "wait", "start"]
    wait_s: float = 0.0


def start_decision(
    *, attempts: int, max_attempts: int, backoff_base_s: float,
    last_transition: datetime | None, now: datetime,
) -> StartDecision:
    """Give up after ``max_attempts`` failures, wait out the back-off, else start a Job."""
    if attempts >= max_attempts:
        return StartDecision("give-up")
    if attempts > 0:
        since = last_transition or now
        wait = since + timedelta(seconds=backoff_s(backoff_base_s, attempts)) - now
        if wait.total_seconds() > 0:
            return StartDecision("wait", wait.total_seconds())
    return StartDecision("start")


@dataclass(frozen=True)
class FailureDecision:
    attempts: int
    gave_up: bool
    requeue_after_s: float | None


def after_failure(*, attempts: int, max_attempts: int, backoff_base_s: float) -> FailureDecision:
    """One more failed attempt: retry after the back-off, or give up at ``max_attempts``."""
    attempts += 1
    if attempts >= max_attempts:
        return FailureDecision(attempts, gave_up=True, requeue_after_s=None)
    return FailureDecision(attempts, gave_up=False,
                           requeue_after_s=backoff_s(backoff_base_s, attempts))


# ------------------------------------------------------------------ versions, lifetime ε

@dataclass(frozen=True)
class Retired:
    versions: list[VersionRecord]
    dropped_versions: int
    dropped_epsilon: str | None


def retire(
    versions: Sequence[VersionRecord], record: VersionRecord, *, current_budget: str,
    dropped_versions: int, dropped_epsilon: str | None, limit: int = MAX_VERSIONS,
) -> Retired:
    """Append ``record``; beyond ``limit`` the oldest records leave the list, never their ε.

    A dropped record's ε moves into ``dropped_epsilon`` when no kept record and not the
    current version still names its budget (so each budget is counted once), and
    ``dropped_versions`` counts the records that left.
    """
    kept = [*versions, record]
    dropped = kept[:-limit] if len(kept) > limit else []
    kept = kept[-limit:]
    still_named = {r.budget for r in kept} | {current_budget}
    total = _decimal(dropped_epsilon) or Decimal(0)
    moved: set[str] = set()
    for old in dropped:
        if old.budget in still_named or old.budget in moved:
            continue
        moved.add(old.budget)
        total += _decimal(old.epsilon_spent) or Decimal(0)
    carried = format_up(total) if dropped or dropped_epsilon is not None else None
    return Retired(kept, dropped_versions + len(dropped), carried)


def lifetime_epsilon(
    versions: Sequence[VersionRecord], current_budget: str | None, current_spent: str | None,
    dropped_epsilon: str | None = None,
) -> str | None:
    """The model's lifetime ε: every budget its versions spent, each counted once.

    A budget named by several records (a status written before budgets were checked on
    retrain) counts once, at the most any record saw spent on it; budgets of versions
    dropped from the list are in ``dropped_epsilon``.
    """
    per_budget: dict[str, Decimal] = {}
    for budget, text in [*((v.budget, v.epsilon_spent) for v in versions),
                         (current_budget or "", current_spent)]:
        value = _decimal(text)
        if value is None:
            continue
        per_budget[budget] = max(per_budget.get(budget, value), value)
    carried = _decimal(dropped_epsilon)
    if not per_budget and carried is None:
        return None
    return format_up(sum(per_budget.values(), carried or Decimal(0)))


def _decimal(text: str | None) -> Decimal | None:
    if text is None:
        return None
    try:
        return Decimal(text)
    except InvalidOperation:
        return None

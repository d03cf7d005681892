"""The model side of erasure requests: read the erased-id list, run the PATE erasure Job,
roll version N+1 on the same budget.

Called from the PrivateModel reconcile (which owns the model's status and its versions), so
an erasure roll and an exhaustion retrain never race: one reconcile at a time per model.

- The list (ConfigMap ``<model>-erasure``, see :mod:`.erasurestate`) is read every
  reconcile; one that lost ids since the last read stops every training Job (fail closed).
- A PATE ensemble with ids not yet removed by the served version gets the Job
  ``<model>-erase-<N+1>``: the served ensemble at /base, only the teachers whose partition
  held an erased id retrain, the version rolls on the *same* budget (same data window minus
  the erased records; teachers are noise-free and release nothing, so nothing is charged
  until answers are, per query, as before; nothing already spent is refunded).
- A DP-SGD / DP-LoRA model is retrained by the ordinary retrain (``retrain.py``) whose Job
  leaves the listed ids out: when the budget is exhausted anyway, for an Immediate request,
  or once a NextRetrain request's deadline came (``model.py`` asks :func:`dpsgd_due`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dpserve.api.privatemodel import ErasureStatus, PrivateModel, VersionRecord
from dpserve.controllers import erasurestate as es
from dpserve.controllers import modelstatus as ms
from dpserve.controllers import retrainstate as rs
from dpserve.controllers.children import apply
from dpserve.controllers.context import OperatorContext
from dpserve.controllers.kubeapi import CONFIGMAPS, JOBS, PODS, ApiError, Conflict
from dpserve.controllers.retrain import BadReport, parse_report
from dpserve.ledger.conditions import rfc3339
from dpserve.resources import BuildContext, build_training_networkpolicy
from dpserve.resources.job import build_unlearn_job, unlearn_plan
from dpserve.resources.names import erasure_configmap_name

Obj = dict[str, Any]


@dataclass(frozen=True)
class ListRead:
    lst: es.ErasureList
    problem: str | None = None  # the list is unusable: no training Job may start


async def read_list(
    ctx: OperatorContext, model: PrivateModel, erasure: ErasureStatus | None
) -> ListRead:
    """The model's erased-id list, checked against ``erasure`` (the model's status as last
    written: the list must still start with what it held then)."""
    namespace, name = str(model.metadata["namespace"]), str(model.metadata["name"])
    raw = await ctx.api.get(CONFIGMAPS, namespace, erasure_configmap_name(name))
    if raw is None:
        lst = es.ErasureList()
    else:
        try:
            lst = es.parse_list(raw.get("data"))
        except es.ErasureListError as exc:
            return ListRead(es.ErasureList(), f"ConfigMap {erasure_configmap_name(name)}: {exc}")
    problem = es.check_grown(lst, erasure)
    return ListRead(lst, f"ConfigMap {erasure_configmap_name(name)}: {problem}"
                    if problem else None)


def listing(status: ErasureStatus | None, read: ListRead) -> ErasureStatus | None:
    """The model's erasure status after this read: count and digest, and a give-up cleared
    when a new request listed more ids."""
    if read.problem is not None:
        base = status or ErasureStatus()
        return base.model_copy(update={"message": read.problem[:1024]})
    if not read.lst.ids and status is None:
        return None
    grown = status is None or len(read.lst.ids) > status.listed
    new = es.with_listing(status, read.lst)
    if grown and new.gave_up:
        new = new.model_copy(update={"gave_up": None, "attempts": None, "message": None})
    if status is not None and status.message and status.message.startswith("ConfigMap "):
        new = new.model_copy(update={"message": None})  # the list is usable again
    return new


def dpsgd_due(
    model: PrivateModel, erasure: ErasureStatus | None, read: ListRead, now: Any
) -> bool:
    """A DP-SGD / DP-LoRA model must retrain now to remove listed ids (whether the list is
    usable is the caller's check: a damaged list stops the retrain with a condition)."""
    if model.spec.model.format == "pate-ensemble":
        return False
    return es.due_now(read.lst, es.applied_count(erasure), pate=False, now=now)


@dataclass(frozen=True)
class UnlearnStep:
    rolled: bool
    in_progress: bool
    requeue_after_s: float | None = None
    notice: str | None = None  # the roll, for a Normal Event


def pate_due(model: PrivateModel, erasure: ErasureStatus | None, read: ListRead) -> bool:
    if model.spec.model.format != "pate-ensemble":
        return False
    if model.spec.retraining is None:
        return False
    if erasure is not None and erasure.gave_up:
        return False
    return len(read.lst.ids) > es.applied_count(erasure) or (
        erasure is not None and erasure.job is not None)


async def step(
    ctx: OperatorContext, model: PrivateModel, sb: ms.StatusBuilder, bctx: BuildContext,
    budget: str, budget_spent: str | None,
) -> UnlearnStep:
    """Advance the PATE erasure by one reconcile (``bctx.erased_ids`` = the list's count)."""
    status = sb.status
    erasure = status.erasure or ErasureStatus()
    namespace = str(model.metadata["namespace"])
    uid = str(model.metadata.get("uid", ""))
    plan = unlearn_plan(model, bctx)
    attempts = erasure.attempts or 0
    job = await ctx.api.get(JOBS, namespace, plan.job_name)
    state = rs.job_state(job)
    if state == "Absent":
        if attempts >= ctx.settings.retrain_max_attempts:
            status.erasure = erasure.model_copy(update={"gave_up": True, "job": None})
            return UnlearnStep(rolled=False, in_progress=False)
        await apply(ctx.api, "NetworkPolicy", build_training_networkpolicy(model, bctx), uid,
                    ctx.metrics)
        try:
            await ctx.api.create(JOBS, namespace, build_unlearn_job(model, bctx))
            ctx.metrics.api_writes.labels("Job", "create").inc()
        except Conflict:
            pass
        status.erasure = erasure.model_copy(update={"job": plan.job_name})
        return UnlearnStep(rolled=False, in_progress=True)
    assert job is not None
    if state == "Running":
        status.erasure = erasure.model_copy(update={"job": plan.job_name})
        return UnlearnStep(rolled=False, in_progress=True)
    given = es.given_ids(job)
    failure: str | None = None
    if state == "Complete":
        pods = await ctx.api.list(PODS, namespace, label_selector=f"job-name={plan.job_name}")
        try:
            report = parse_report(pods)
            failure = _check_report(report, given)
        except BadReport as exc:
            failure = f"Job {plan.job_name} succeeded but its report is unusable: {exc}"
        if failure is None:
            _roll(model, sb, plan.version, plan.artifact, budget, budget_spent, given, report)
            return UnlearnStep(rolled=True, in_progress=False,
                               notice=roll_message(plan.version, report, budget))
    else:
        failure = rs.job_failure_message(job, plan.job_name)
    decision = rs.after_failure(attempts=attempts, max_attempts=ctx.settings.retrain_max_attempts,
                                backoff_base_s=ctx.settings.retrain_backoff_s)
    status.erasure = erasure.model_copy(update={
        "job": None, "attempts": decision.attempts, "message": failure[:1024],
        "gave_up": True if decision.gave_up else None})
    try:  # the next attempt reuses the deterministic name
        await ctx.api.delete(JOBS, namespace, plan.job_name)
        ctx.metrics.api_writes.labels("Job", "delete").inc()
    except ApiError:
        pass
    return UnlearnStep(rolled=False, in_progress=not decision.gave_up,
                       requeue_after_s=decision.requeue_after_s)


def _check_report(report: dict[str, Any], given: int) -> str | None:
    """The trainer excluded at least the ids the Job was given (the list only grows)."""
    excluded = report.get("excludedIds")
    if not isinstance(excluded, int) or excluded < given:
        return (f"the trainer excluded {excluded!r} ids but the Job was given {given}: the "
                "erased-id list shrank while it ran; not rolled out")
    return None


def _roll(
    model: PrivateModel, sb: ms.StatusBuilder, version: str, artifact: str, budget: str,
    budget_spent: str | None, given: int, report: dict[str, Any],
) -> None:
    """Version N+1 serves on the same budget; the old one is kept in status.versions."""
    status = sb.status
    old_version = status.model_version or model.spec.model.version
    retired = rs.retire(
        status.versions,
        VersionRecord(version=old_version, budget=budget,
                      artifact=status.artifact or model.spec.model.artifact,
                      epsilon_spent=budget_spent, retired_at=rfc3339(sb.now)),
        current_budget=budget, dropped_versions=status.dropped_versions or 0,
        dropped_epsilon=status.dropped_versions_epsilon)
    status.versions = retired.versions
    status.dropped_versions = retired.dropped_versions or None
    status.dropped_versions_epsilon = retired.dropped_epsilon
    status.model_version = version
    status.artifact = artifact
    teachers = report.get("retrainedTeachers")
    sha = report.get("trainingSetSha256")
    status.erasure = es.record_applied(
        status.erasure or ErasureStatus(), version, given,
        training_set_sha256=sha if isinstance(sha, str) else None,
        retrained_teachers=len(teachers) if isinstance(teachers, list) else None,
        membership_audit=es.membership_audit(report))


def roll_message(version: str, report: dict[str, Any], budget: str) -> str:
    teachers = report.get("retrainedTeachers")
    return (f"{version} rolled out without {report.get('erasedRecords')} erased record(s) "
            f"(teachers {teachers} retrained, the others unchanged), still on budget {budget}: "
            "no ε refunded")

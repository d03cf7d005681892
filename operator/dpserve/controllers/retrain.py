"""onBudgetExhausted: Retrain — one Job per version, its report, the next budget, the roll.

The Job's name is deterministic (``<model>-train-<next version>``), so a retried reconcile
finds the Job it already created instead of training (and spending) twice. On success the
report in the container's termination message gives the DP-SGD run (σ, q, steps); the next
PrivacyBudget is created (budgets outlive models: no owner) and the run is charged to it
through the ledger; then the status names the new version, artifact and budget, and the
Deployment rolls. Old versions stay listed with what their budgets spent: the lifetime ε is
their sum, never reset.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from dpserve.api.privacybudget import PrivacyBudgetStatus, TrainingSpend
from dpserve.api.privatemodel import (
    ErasureStatus,
    PrivateModel,
    PrivateModelStatus,
    VersionRecord,
)
from dpserve.controllers import erasurestate as es
from dpserve.controllers import modelstatus as ms
from dpserve.controllers import retrainstate as rs
from dpserve.controllers.children import apply
from dpserve.controllers.context import OperatorContext
from dpserve.controllers.kubeapi import JOBS, PODS, PRIVACYBUDGETS, ApiError, Conflict
from dpserve.controllers.parse import InvalidSpec, parse_budget_spec
from dpserve.ledger import state as ledger_state
from dpserve.ledger.conditions import get_condition, parse_rfc3339, rfc3339
from dpserve.resources import BuildContext, build_job, build_training_networkpolicy
from dpserve.resources.job import TrainingPlan, training_plan
from dpserve.resources.names import TRAIN_CONTAINER, model_key

Obj = dict[str, Any]
REPORT_KEYS = ("noiseMultiplier", "sampleRate", "steps", "epsilon")


class BadReport(ValueError):
    """The trainer's termination message is missing or not the agreed JSON."""


@dataclass(frozen=True)
class RetrainStep:
    rolled: bool  # the status now names the new version (and its budget)
    in_progress: bool  # a Job is running or a retry is scheduled
    requeue_after_s: float | None = None


def next_budget_name(model: PrivateModel, version: str) -> str:
    """``nextBudget.name``, else ``<spec.budgetRef.name>-<version>``: one budget per version.

    The default is built on the model's first budget, not the current one: names do not
    grow with every retrain (``b-v2``, ``b-v3``, ... rather than ``b-v2-v3``), so they stay
    within the 63 characters of a name.
    """
    retraining = model.spec.retraining
    assert retraining is not None
    # The accepted budget: a budgetRef edit refused after the model spent does not rename
    # the per-version budgets.
    accepted = model.status.accepted if model.status is not None else None
    first = accepted.budget_ref if accepted is not None else model.spec.budget_ref.name
    return retraining.next_budget.name or f"{first}-{version}"


def parse_report(pods: list[Obj]) -> dict[str, Any]:
    """The trainer's JSON report from the train container's termination message."""
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            if cs.get("name") != TRAIN_CONTAINER:
                continue
            terminated = (cs.get("state") or {}).get("terminated") or {}
            if terminated.get("exitCode") != 0 or not terminated.get("message"):
                continue
            try:
                report = json.loads(terminated["message"])
            except ValueError as exc:
                raise BadReport(f"termination message is not JSON: {exc}") from exc
            if not isinstance(report, dict):
                raise BadReport("termination message is not a JSON object")
            missing = [k for k in REPORT_KEYS if k not in report]
            if missing:
                raise BadReport(f"report lacks {', '.join(missing)}")
            return report
    raise BadReport("no succeeded train container with a termination message")


@dataclass(frozen=True)
class ReportSpend:
    spend: TrainingSpend | None  # the DP-SGD run to charge; None: PATE teachers
    mismatch: str | None = None  # the report disagrees with the spec (charged by the spec)


def report_spend(report: dict[str, Any], mode: str) -> ReportSpend:
    """What to charge for a finished Job, decided by the spec's ``retraining.mode``.

    The trainer's own ``mode`` never decides: a report saying ``pate`` for a ``dpsgd``
    retrain is still charged its DP-SGD run (a report without one is unusable), and the
    disagreement is returned to be surfaced. PATE teachers are trained without noise on
    disjoint partitions: they release nothing, every answer is a GNMax release charged by
    the ledger per query, so a ``pate`` retrain has no training spend to record.
    """
    reported = report.get("mode")
    mismatch = None
    if reported is not None and reported != mode:
        mismatch = (f"the trainer reported mode {reported!r} but spec.retraining.mode is "
                    f"{mode!r}: charged as {mode}")
    if mode == "pate":
        return ReportSpend(None, mismatch)
    try:
        spend = TrainingSpend(
            noise_multiplier=repr(float(report["noiseMultiplier"])),
            sample_rate=repr(float(report["sampleRate"])),
            steps=int(report["steps"]),
            sampling=report.get("sampling", "poisson"),
        )
    except (ValidationError, TypeError, ValueError) as exc:
        raise BadReport(f"report has an invalid DP-SGD run: {exc}") from exc
    return ReportSpend(spend, mismatch)


async def _next_budget_refusal(
    ctx: OperatorContext, model: PrivateModel, status: PrivateModelStatus, version: str,
) -> rs.Refusal | None:
    """Read the next budget and decide (purely) whether it may pay for ``version``."""
    namespace = str(model.metadata["namespace"])
    current_budget = status.budget or model.spec.budget_ref.name
    next_name = next_budget_name(model, version)
    raw = await ctx.api.get(PRIVACYBUDGETS, namespace, next_name)
    next_status: PrivacyBudgetStatus | None = None
    next_fits: bool | None = None
    if raw is not None:
        try:
            next_status = PrivacyBudgetStatus.model_validate(raw.get("status") or {})
            next_fits = ledger_state.query_fits(
                parse_budget_spec(raw), next_status, model.spec.serving.mechanism,
                accounting=ctx.accounting)
        except (InvalidSpec, ValueError) as exc:
            return rs.Refusal(rs.NEXT_BUDGET_EXHAUSTED,
                              f"PrivacyBudget {next_name} cannot be read: {exc}")
    return rs.next_budget_refusal(
        next_name=next_name, version=version, current_budget=current_budget,
        current_version=status.model_version or model.spec.model.version,
        retired=status.versions, consumer=model_key(namespace, str(model.metadata["name"])),
        next_status=next_status, next_fits=next_fits)


def _refuse(sb: ms.StatusBuilder, refusal: rs.Refusal) -> RetrainStep:
    """Stop retraining with a condition (its Warning Event comes with the transition)."""
    sb.set(ms.RETRAINING, "False", refusal.reason, refusal.message)
    sb.status.retrain_job = None
    return RetrainStep(rolled=False, in_progress=False)


async def step(
    ctx: OperatorContext, model: PrivateModel, raw: Obj, sb: ms.StatusBuilder,
    bctx: BuildContext, budget_raw: Obj,
) -> RetrainStep:
    """Advance the retraining of ``model`` by one reconcile; writes only what changed."""
    status = sb.status
    namespace = str(model.metadata["namespace"])
    plan = training_plan(model, bctx)
    attempts = status.retrain_attempts or 0
    job = await ctx.api.get(JOBS, namespace, plan.job_name)
    state = rs.job_state(job)
    if state == "Absent":
        return await _start(ctx, model, sb, bctx, plan, attempts)
    assert job is not None
    status.retrain_job = plan.job_name
    if state == "Running":
        sb.set(ms.RETRAINING, "True", "JobRunning",
               f"Job {plan.job_name} trains {plan.version} (attempt {attempts + 1})")
        return RetrainStep(rolled=False, in_progress=True)
    if state == "Complete":
        failure = await _finish(ctx, model, sb, job, plan, budget_raw)
        if failure is None:
            ctx.metrics.retrains_total.labels(namespace, str(model.metadata["name"]),
                                              "succeeded").inc()
            return RetrainStep(rolled=True, in_progress=False)
    else:
        failure = rs.job_failure_message(job, plan.job_name)
    return await _failed(ctx, model, sb, plan, attempts, failure)


async def _start(ctx: OperatorContext, model: PrivateModel, sb: ms.StatusBuilder,
                 bctx: BuildContext, plan: TrainingPlan, attempts: int) -> RetrainStep:
    """No Job yet: refuse, give up, wait out the back-off, or create it."""
    status = sb.status
    namespace = str(model.metadata["namespace"])
    refusal = await _next_budget_refusal(ctx, model, status, plan.version)
    if refusal is not None:  # checked before any training: nothing is spent or started
        return _refuse(sb, refusal)
    cond = get_condition(status.conditions, ms.RETRAINING)
    start = rs.start_decision(
        attempts=attempts, max_attempts=ctx.settings.retrain_max_attempts,
        backoff_base_s=ctx.settings.retrain_backoff_s,
        last_transition=parse_rfc3339(cond.last_transition_time) if cond else None,
        now=sb.now)
    if start.action == "give-up":
        sb.set(ms.RETRAINING, "False", "RetrainFailed",
               f"gave up training {plan.version} after {attempts} failed attempts")
        return RetrainStep(rolled=False, in_progress=False)
    if start.action == "wait":
        return RetrainStep(rolled=False, in_progress=True, requeue_after_s=start.wait_s)
    await apply(ctx.api, "NetworkPolicy", build_training_networkpolicy(model, bctx),
                str(model.metadata.get("uid", "")), ctx.metrics)
    try:
        await ctx.api.create(JOBS, namespace, build_job(model, bctx))
        ctx.metrics.api_writes.labels("Job", "create").inc()
    except Conflict:
        pass  # created by an earlier attempt of this reconcile: it is tracked next time
    status.retrain_job = plan.job_name
    sb.set(ms.RETRAINING, "True", "JobRunning",
           f"Job {plan.job_name} trains {plan.version} (attempt {attempts + 1})")
    ctx.metrics.retrains_total.labels(namespace, str(model.metadata["name"]), "started").inc()
    return RetrainStep(rolled=False, in_progress=True)


async def _finish(ctx: OperatorContext, model: PrivateModel, sb: ms.StatusBuilder, job: Obj,
                  plan: TrainingPlan, budget_raw: Obj) -> str | None:
    """A succeeded Job: read its report and roll to its version. None = rolled."""
    namespace = str(model.metadata["namespace"])
    pods = await ctx.api.list(PODS, namespace, label_selector=f"job-name={plan.job_name}")
    try:
        report = parse_report(pods)
        assert model.spec.retraining is not None
        charge = report_spend(report, model.spec.retraining.mode)
    except BadReport as exc:
        return f"Job {plan.job_name} succeeded but its report is unusable: {exc}"
    refusal = await _next_budget_refusal(ctx, model, sb.status, plan.version)
    if refusal is not None:  # e.g. the Job of an operator that did not check yet
        return refusal.message
    run = str((job.get("metadata") or {}).get("uid") or plan.job_name)
    return await _roll(ctx, model, sb, budget_raw, plan.version, plan.artifact, report,
                       charge, run, es.given_ids(job))


async def _failed(ctx: OperatorContext, model: PrivateModel, sb: ms.StatusBuilder,
                  plan: TrainingPlan, attempts: int, failure: str) -> RetrainStep:
    """Count the failed attempt, delete the Job (its name is reused), retry or give up."""
    status = sb.status
    namespace = str(model.metadata["namespace"])
    decision = rs.after_failure(attempts=attempts,
                                max_attempts=ctx.settings.retrain_max_attempts,
                                backoff_base_s=ctx.settings.retrain_backoff_s)
    status.retrain_attempts = decision.attempts
    status.retrain_job = None
    sb.set(ms.RETRAINING, "False", "JobFailed", f"{failure} (attempt {decision.attempts})")
    ctx.metrics.retrains_total.labels(namespace, str(model.metadata["name"]), "failed").inc()
    try:  # the next attempt reuses the deterministic name
        await ctx.api.delete(JOBS, namespace, plan.job_name)
        ctx.metrics.api_writes.labels("Job", "delete").inc()
    except ApiError:
        pass
    if decision.gave_up:
        return RetrainStep(rolled=False, in_progress=False)
    return RetrainStep(rolled=False, in_progress=True, requeue_after_s=decision.requeue_after_s)


async def _ensure_budget(ctx: OperatorContext, model: PrivateModel, budget_raw: Obj,
                         new_budget: str, version: str) -> None:
    """Create the version's PrivacyBudget unless it exists (budgets outlive models: no
    owner); it inherits the current budget's accountant."""
    namespace = str(model.metadata["namespace"])
    name = str(model.metadata["name"])
    retraining = model.spec.retraining
    assert retraining is not None
    if await ctx.api.get(PRIVACYBUDGETS, namespace, new_budget) is not None:
        return
    accountant = ((budget_raw.get("spec") or {}).get("accountant")) or "rdp"
    body = {
        "apiVersion": "dpserve.io/v1alpha1",
        "kind": "PrivacyBudget",
        "metadata": {"name": new_budget, "namespace": namespace,
                     "labels": {"dpserve.io/model": name},
                     "annotations": {"dpserve.io/created-for": f"{name} {version}"}},
        "spec": {"epsilon": retraining.next_budget.epsilon,
                 "delta": retraining.next_budget.delta, "accountant": accountant},
    }
    try:
        await ctx.api.create(PRIVACYBUDGETS, namespace, body)
        ctx.metrics.api_writes.labels("PrivacyBudget", "create").inc()
    except Conflict:
        pass


async def _charge(ctx: OperatorContext, model: PrivateModel, new_budget: str, version: str,
                  spend: TrainingSpend, run: str) -> tuple[str | None, list[str]]:
    """Charge the DP-SGD run to the version's budget: (refusal, notes to surface)."""
    namespace = str(model.metadata["namespace"])
    recorded = await ctx.ledger.record_training(
        namespace, new_budget, consumer=model_key(namespace, str(model.metadata["name"])),
        model_version=version, spend=spend, run=run,
    )
    if isinstance(recorded, ledger_state.Refusal):
        return (f"budget {new_budget} refused the DP-SGD run of {version}: "
                f"{recorded.message}"), []
    notes = []
    differing = [t for t in recorded.earlier_runs if t != spend]
    if differing:
        notes.append(
            f"budget {new_budget} already held {len(differing)} other DP-SGD run(s) of "
            f"{version} (" + "; ".join(
                f"σ={t.noise_multiplier}, q={t.sample_rate}, steps={t.steps}"
                for t in differing) + "): every run is charged")
    kept = recorded.existing
    if kept is not None:
        notes.append(f"Job run {run} was recorded earlier with σ={kept.noise_multiplier}, "
                     f"q={kept.sample_rate}, steps={kept.steps}; that record is kept")
    return None, notes


def _trained_message(version: str, report: dict[str, Any], spend: TrainingSpend | None,
                     new_budget: str) -> str:
    accuracy = report.get("accuracy")
    trained = (
        f"{version} trained with ε={report.get('epsilon')} (σ={spend.noise_multiplier}, "
        f"q={spend.sample_rate}, steps={spend.steps})"
        if spend is not None
        else f"{version}: {report.get('teachers')} PATE teachers trained (answers are charged "
        "per query)"
    )
    return (trained + (f", accuracy {accuracy}" if accuracy is not None else "")
            + f"; serving from budget {new_budget}")


async def _roll(
    ctx: OperatorContext, model: PrivateModel, sb: ms.StatusBuilder, budget_raw: Obj,
    version: str, artifact: str, report: dict[str, Any], charge: ReportSpend, run: str,
    erased_ids: int = 0,
) -> str | None:
    """Create the next budget, charge the run to it, switch the status. None = success.

    ``erased_ids``: the Job left out the first that many ids of the model's erased-id list
    (its annotation), so the new version removed them (completing the requests they cover).
    """
    excluded = report.get("excludedIds")
    if erased_ids > 0 and (not isinstance(excluded, int) or excluded < erased_ids):
        return (f"the trainer excluded {excluded!r} erased ids but the Job was given "
                f"{erased_ids}: not rolled out")
    status = sb.status
    retraining = model.spec.retraining
    assert retraining is not None
    new_budget = next_budget_name(model, version)
    await _ensure_budget(ctx, model, budget_raw, new_budget, version)
    notes = [charge.mismatch] if charge.mismatch else []
    if charge.spend is not None:
        refused, charged = await _charge(ctx, model, new_budget, version, charge.spend, run)
        if refused is not None:
            return refused
        notes += charged
    retired = rs.retire(
        status.versions,
        VersionRecord(version=status.model_version or model.spec.model.version,
                      budget=status.budget or model.spec.budget_ref.name,
                      artifact=status.artifact or model.spec.model.artifact,
                      epsilon_spent=(budget_raw.get("status") or {}).get("epsilonSpent"),
                      retired_at=rfc3339(sb.now)),
        current_budget=new_budget, dropped_versions=status.dropped_versions or 0,
        dropped_epsilon=status.dropped_versions_epsilon)
    status.versions = retired.versions
    status.dropped_versions = retired.dropped_versions or None
    status.dropped_versions_epsilon = retired.dropped_epsilon
    status.model_version = version
    status.artifact = artifact
    status.budget = new_budget
    status.retrain_job = None
    status.retrain_attempts = 0
    if erased_ids > 0:
        teachers = report.get("teachers") if retraining.mode == "pate" else None
        sha = report.get("trainingSetSha256")
        status.erasure = es.record_applied(
            status.erasure or ErasureStatus(), version, erased_ids,
            training_set_sha256=sha if isinstance(sha, str) else None,
            retrained_teachers=teachers if isinstance(teachers, int) else None)
    message = _trained_message(version, report, charge.spend, new_budget)
    if notes:  # charged by the spec, never dropped; said with a Warning (the transition)
        sb.set(ms.RETRAINING, "False", ms.REPORT_MISMATCH, message + "; " + "; ".join(notes))
    else:
        sb.set(ms.RETRAINING, "False", "Retrained", message)
    return None

"""The PrivateModel reconcile: one function for every trigger (kopf handlers and the queue).

fetch -> parse -> conditions -> confidential placement -> training charge (once per
version) -> replicas (spec, or 0 when blocked or the budget cannot pay one more query)
-> owned children (create / skip / replace) -> readiness -> status written once, only if
it changed, with the object's resourceVersion as precondition.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from dpserve.api.privacybudget import PrivacyBudgetSpec, PrivacyBudgetStatus
from dpserve.api.privatemodel import (
    AcceptedSpec,
    Phase,
    PrivateModel,
    PrivateModelStatus,
    VersionRecord,
)
from dpserve.attestation.condition import attested_condition
from dpserve.controllers import (
    kstatus,
    retrain,
    retrainstate,
    servingstate,
    specedits,
    statusfields,
    unlearn,
)
from dpserve.controllers import modelstatus as ms
from dpserve.controllers.children import NotOwned, apply_serving
from dpserve.controllers.context import ModelKey, OperatorContext, now
from dpserve.controllers.kubeapi import PODS, PRIVACYBUDGETS, PRIVATEMODELS, ApiError
from dpserve.controllers.ledgerservice import UNAVAILABLE as LEDGER_UNAVAILABLE
from dpserve.controllers.ledgerservice import ledger_address
from dpserve.controllers.parse import InvalidSpec, parse_budget_spec, parse_model
from dpserve.controllers.readiness import serving_readiness
from dpserve.ledger import events as ledger_events
from dpserve.ledger import state as ledger_state
from dpserve.ledger.attestation import JwksUnusable
from dpserve.ledger.wire import LeaseFailure
from dpserve.resources import build_context
from dpserve.resources.confidential import ConfidentialDecision
from dpserve.resources.labels import INFERENCE, selector_labels
from dpserve.resources.names import FILTER_PORT, model_key, service_name

Obj = dict[str, Any]
# How soon a model whose ledger Service is missing (or headless) is looked at again.
LEDGER_RETRY_S = 10.0
logger = logging.getLogger(__name__)


@dataclass
class BudgetView:
    name: str
    raw: Obj | None
    spec: PrivacyBudgetSpec | None = None
    status: PrivacyBudgetStatus | None = None
    problem: tuple[str, str] | None = None  # (reason, message) when unusable


async def reconcile_model(ctx: OperatorContext, namespace: str, name: str) -> None:
    """Reconcile one PrivateModel; raises InvalidSpec (permanent) or ApiError (retry)."""
    async with ctx.lock(("PrivateModel", namespace, name)):
        started = time.monotonic()
        ctx.metrics.reconciles.labels("PrivateModel").inc()
        try:
            await _reconcile(ctx, namespace, name)
        except InvalidSpec:
            ctx.metrics.reconcile_errors.labels("PrivateModel", "InvalidSpec").inc()
            raise
        except ApiError as exc:
            ctx.metrics.reconcile_errors.labels("PrivateModel", exc.reason or "ApiError").inc()
            raise
        finally:
            ctx.metrics.reconcile_seconds.labels("PrivateModel").observe(
                time.monotonic() - started
            )


async def queue_handler(ctx: OperatorContext, key: ModelKey) -> None:
    """The work-queue entry point: an invalid spec is already surfaced, not retried."""
    try:
        await reconcile_model(ctx, *key)
    except InvalidSpec:
        return


async def _write_status(ctx: OperatorContext, raw: Obj, status: Obj) -> Obj:
    meta = raw["metadata"]
    body = {**raw, "status": status}
    written = await ctx.api.replace(PRIVATEMODELS, meta["namespace"], meta["name"], body,
                                    subresource="status")
    ctx.metrics.api_writes.labels("PrivateModel", "status").inc()
    return written


async def _update_status(ctx: OperatorContext, raw: Obj, status: Obj) -> bool:
    """Write ``status`` if it changed; report fields an older CRD made the server prune.

    Fields once pruned are no longer written by this process: the comparison would differ
    on every reconcile and rewrite the status forever (a CRD older than the operator).
    """
    status = statusfields.without_paths(status, ctx.pruned_status_paths)
    if status == (raw.get("status") or {}):
        return False
    written = await _write_status(ctx, raw, status)
    pruned = {statusfields.generic(p) for p in
              statusfields.missing_paths(status, written.get("status") or {})}
    new = pruned - ctx.pruned_status_paths
    if new:
        ctx.pruned_status_paths |= new
        fields = ", ".join(sorted(statusfields.dotted(p) for p in new))
        message = (f"the API server dropped {fields}: the PrivateModel CRD is older than "
                   "this operator; install the operator's CRDs (dpserve crds)")
        logger.warning("%s", message)
        await ctx.api.event(raw, type="Warning", reason="StatusFieldsPruned", message=message,
                            now=_stamp())
    return True


async def _status_unreadable(ctx: OperatorContext, raw: Obj, problem: str) -> None:
    """Fail closed: change nothing, keep the status, say why (condition + Warning Event)."""
    ctx.metrics.reconcile_errors.labels("PrivateModel", statusfields.STATUS_UNREADABLE).inc()
    found = raw.get("status")
    raw_status: Obj = found if isinstance(found, dict) else {}
    new = statusfields.unreadable(raw_status, problem, raw["metadata"].get("generation"),
                                  now())
    if new is not None and new == raw_status:
        return  # already surfaced
    if new is not None:
        await _write_status(ctx, raw, new)
    await ctx.api.event(raw, type="Warning", reason=statusfields.STATUS_UNREADABLE,
                        message=f"status kept as it is, nothing reconciled: {problem}",
                        now=_stamp())


async def _invalid(ctx: OperatorContext, raw: Obj, message: str) -> None:
    """Surface an invalid spec: Ready False + phase Failed + one Warning Event; no children."""
    read = statusfields.read_model_status(raw.get("status"))
    if read.problem is not None:
        await _status_unreadable(ctx, raw, read.problem)
        return
    sb = ms.StatusBuilder(read.status, raw["metadata"].get("generation"), now())
    sb.set(ms.READY, "False", "InvalidSpec", message[:32768])
    sb.status.phase = "Failed"
    new = statusfields.with_extras(sb.finish().wire(), read)
    if await _update_status(ctx, raw, new):
        await ctx.api.event(raw, type="Warning", reason="InvalidSpec", message=message,
                            now=_stamp())


def _stamp() -> str:
    from dpserve.ledger.conditions import rfc3339

    return rfc3339(now())


async def _budget(ctx: OperatorContext, namespace: str, name: str, model: str) -> BudgetView:
    """The budget as ``model``'s reconcile reads it (that version then wakes it no more)."""
    raw = await ctx.api.get(PRIVACYBUDGETS, namespace, name)
    ctx.echoes.read_budget(namespace, model, name,
                           (raw or {}).get("metadata", {}).get("resourceVersion"))
    view = BudgetView(name, raw)
    if raw is None:
        view.problem = ("BudgetNotFound", f"PrivacyBudget {name} does not exist")
        return view
    try:
        view.spec = parse_budget_spec(raw)
    except InvalidSpec as exc:
        view.problem = ("InvalidBudget", f"PrivacyBudget {name} has an invalid spec: {exc}")
        return view
    try:
        view.status = PrivacyBudgetStatus.model_validate(raw.get("status") or {})
    except ValueError:
        view.status = None
    return view


def _training_recorded(status: PrivacyBudgetStatus | None, consumer: str, version: str) -> bool:
    return status is not None and any(
        e.kind == "training" and e.consumer == consumer and e.model_version == version
        for e in status.ledger
    )


def _mechanism_name(model: PrivateModel) -> str:
    return str(model.spec.serving.mechanism.type)


def _fits(ctx: OperatorContext, model: PrivateModel, budget: BudgetView) -> bool:
    """Whether one more query fits; False with ``budget.problem`` set when the accountant
    cannot evaluate the spend (BudgetAvailable False, reason AccountingFailed, one Event on
    the transition): never an exception that fails every reconcile, never "exhausted"."""
    assert budget.spec is not None
    try:
        return ledger_state.query_fits(budget.spec, budget.status,
                                       model.spec.serving.mechanism, accounting=ctx.accounting)
    except ledger_state.ACCOUNTING_ERRORS as exc:
        budget.problem = (
            ledger_state.ACCOUNTING_FAILED,
            f"the accountant cannot evaluate one more {_mechanism_name(model)} query on "
            f"PrivacyBudget {budget.name}: {ledger_state.accounting_message(exc)}",
        )
        return False


async def _charge_declared_training(
    ctx: OperatorContext, model: PrivateModel, budget: BudgetView, version: str
) -> str | None:
    """Charge the artifact's declared DP-SGD run once; returns a refusal message or None."""
    declared = model.spec.model.training
    key = model_key(str(model.metadata["namespace"]), str(model.metadata["name"]))
    if declared is None or version != model.spec.model.version:
        return None  # retrained versions were charged when their Job succeeded
    if _training_recorded(budget.status, key, version):
        return None
    result = await ctx.ledger.record_training(
        str(model.metadata["namespace"]), budget.name, consumer=key, model_version=version,
        spend=ledger_events.training_spend(declared),
    )
    if isinstance(result, ledger_state.Refusal):
        return result.message
    budget.status = result.status
    return None


async def _accepted_before_upgrade(
    ctx: OperatorContext, model: PrivateModel, status: PrivateModelStatus,
) -> AcceptedSpec:
    """``status.accepted`` of a status written by an operator that did not record it: what
    that operator served (it ignored later edits of budgetRef / model), and whether the
    model spent, so that an edit it ignored is now followed or refused, never dropped."""
    spec = model.spec
    if status.versions:  # retrained: spent; the first declared values are the spec's
        return specedits.declared(spec, spent=True)
    budget = await _budget(ctx, str(model.metadata["namespace"]), status.budget or "",
                           str(model.metadata["name"]))
    key = model_key(str(model.metadata["namespace"]), str(model.metadata["name"]))
    spent = budget.status is not None and any(e.consumer == key for e in budget.status.ledger)
    return AcceptedSpec(
        budget_ref=status.budget or spec.budget_ref.name,
        artifact=status.artifact or spec.model.artifact,
        version=status.model_version or spec.model.version,
        training=spec.model.training, spent=spent)


async def _roll_declared_version(
    ctx: OperatorContext, model: PrivateModel, sb: ms.StatusBuilder, budget: BudgetView,
    edit: specedits.EditDecision,
) -> ms.Transition | str:
    """Roll out a new declared version on the budget the model spends: its declared
    training charged first (a refusal keeps the old version and is returned), the old
    version kept in status.versions."""
    status = sb.status
    spec = model.spec
    namespace, name = str(model.metadata["namespace"]), str(model.metadata["name"])
    new = spec.model.version
    declared = spec.model.training
    key = model_key(namespace, name)
    if declared is not None and not _training_recorded(budget.status, key, new):
        result = await ctx.ledger.record_training(
            namespace, budget.name, consumer=key, model_version=new,
            spend=ledger_events.training_spend(declared))
        if isinstance(result, ledger_state.Refusal):
            return (f"spec.model.version: {new}'s declared training does not fit PrivacyBudget "
                    f"{budget.name}: {result.message}")
        budget.status = result.status
    old_version = status.model_version or new
    retired = retrainstate.retire(
        status.versions,
        VersionRecord(version=old_version, budget=budget.name,
                      artifact=status.artifact or spec.model.artifact,
                      epsilon_spent=budget.status.epsilon_spent if budget.status else None,
                      retired_at=_stamp()),
        current_budget=budget.name, dropped_versions=status.dropped_versions or 0,
        dropped_epsilon=status.dropped_versions_epsilon)
    status.versions = retired.versions
    status.dropped_versions = retired.dropped_versions or None
    status.dropped_versions_epsilon = retired.dropped_epsilon
    status.model_version = new
    status.artifact = spec.model.artifact
    status.accepted = edit.accepted
    return ms.Transition("Normal", "VersionRolledOut",
                         f"{old_version} -> {new} ({spec.model.artifact}) on budget "
                         f"{budget.name}" + (", its declared training charged"
                                             if declared is not None else ""))


@dataclass
class _Pass:
    """One reconcile's working state, handed from phase to phase of :func:`_reconcile`."""

    ctx: OperatorContext
    raw: Obj
    model: PrivateModel
    sb: ms.StatusBuilder
    decision: ConfidentialDecision
    budget: BudgetView
    version: str
    refused: str | None
    notices: list[ms.Transition]
    fits: bool = False
    training_refusal: str | None = None
    in_retraining: bool = False
    requeue_after: float | None = None

    @property
    def namespace(self) -> str:
        return str(self.model.metadata["namespace"])

    @property
    def name(self) -> str:
        return str(self.model.metadata["name"])


async def _reconcile(ctx: OperatorContext, namespace: str, name: str) -> None:
    raw = await ctx.api.get(PRIVATEMODELS, namespace, name)
    if raw is None or raw["metadata"].get("deletionTimestamp"):
        return
    try:
        model = parse_model(raw)
    except InvalidSpec as exc:
        await _invalid(ctx, raw, str(exc))
        raise
    read = statusfields.read_model_status(raw.get("status"))
    if read.problem is not None:
        await _status_unreadable(ctx, raw, read.problem)
        return
    sb = ms.StatusBuilder(read.status, raw["metadata"].get("generation"), now())

    # Confidential placement: required and impossible -> nothing is scheduled anywhere.
    decision: ConfidentialDecision = await ctx.cluster.decide(model.spec.confidential)
    good = decision.ok and not decision.degraded
    sb.set(ms.CONFIDENTIAL, "True" if good else "False", decision.reason, decision.message)
    await _attested(ctx, sb, model)

    p = await _follow_spec(ctx, raw, model, sb, decision)
    await _retrain_or_unlearn(p)
    _budget_available(p)
    plan = servingstate.serving_plan(
        placement_ok=decision.ok, budget_problem=p.budget.problem is not None,
        training_refused=p.training_refusal is not None, fits=p.fits,
        in_retraining=p.in_retraining, desired_replicas=model.spec.serving.replicas)
    if plan.restore_replicas != "keep":
        sb.status.restore_replicas = plan.restore_replicas
    if servingstate.newly_stopped(ms_phase(sb.previous), plan):
        ctx.metrics.models_stopped_total.labels(
            namespace, name, model.spec.on_budget_exhausted).inc()
    ready_replicas = await _serve(p, plan.replicas, plan.phase)
    await _finish(p, read, plan.replicas, ready_replicas)


async def _follow_spec(ctx: OperatorContext, raw: Obj, model: PrivateModel,
                       sb: ms.StatusBuilder, decision: ConfidentialDecision) -> _Pass:
    """Spec edits (followed before the model spent, rolled as a new declared version, or
    refused), the budget the served version spends, its declared training charged once,
    and whether one more query fits."""
    status, spec = sb.status, model.spec
    namespace = str(model.metadata["namespace"])
    notices: list[ms.Transition] = []
    if status.accepted is None and status.budget is not None:
        status.accepted = await _accepted_before_upgrade(ctx, model, status)
    edit = specedits.decide(spec, status.accepted, current_version=status.model_version,
                            served_versions=[v.version for v in status.versions])
    refused = edit.refused
    if edit.action == specedits.FOLLOW:  # nothing spent yet: the spec is followed
        status.budget = spec.budget_ref.name
        status.artifact = spec.model.artifact
        status.model_version = spec.model.version
        notices.append(ms.Transition(
            "Normal", "SpecEditApplied",
            f"{', '.join(edit.changed)} changed before the model spent anything: now serving "
            f"{spec.model.version} ({spec.model.artifact}) from budget {spec.budget_ref.name}"))
    if edit.action != specedits.ROLL:
        status.accepted = edit.accepted

    version = status.model_version or spec.model.version
    budget = await _budget(ctx, namespace, status.budget or spec.budget_ref.name,
                           str(model.metadata["name"]))
    if edit.action == specedits.ROLL and budget.problem is None:
        rolled = await _roll_declared_version(ctx, model, sb, budget, edit)
        if isinstance(rolled, str):
            refused = rolled
        else:
            notices.append(rolled)
            version = status.model_version or version
    p = _Pass(ctx, raw, model, sb, decision, budget, version, refused, notices)
    if budget.problem is None:
        p.training_refusal = await _charge_declared_training(ctx, model, budget, version)
        p.fits = p.training_refusal is None and _fits(ctx, model, budget)
    return p


async def _retrain_or_unlearn(p: _Pass) -> None:
    """The Retraining condition, and a retrain (budget exhausted, or erased records due) or
    a PATE erasure step where one is called for; may move the model to a new version."""
    ctx, model, sb, budget = p.ctx, p.model, p.sb, p.budget
    spec, status = model.spec, sb.status
    # Erased record ids: every training Job leaves them out; a damaged list starts none.
    erasures = await unlearn.read_list(ctx, model, status.erasure)
    status.erasure = unlearn.listing(status.erasure, erasures)
    erased_ids = len(erasures.lst.ids)
    erasure_job = status.erasure is not None and status.erasure.job is not None

    if spec.retraining is None or spec.on_budget_exhausted != "Retrain":
        sb.set(ms.RETRAINING, "False", "NotConfigured",
               f"onBudgetExhausted is {spec.on_budget_exhausted}")
    elif sb.condition_status(ms.RETRAINING) == "Unknown":
        sb.set(ms.RETRAINING, "False", "NotNeeded", "the budget still pays for queries")

    # A model served with mechanism none never spends on queries: its budget is "exhausted"
    # for it only when its declared training does not fit. It is then not served, and
    # retrained only from an explicit lora.base (an artifact already paid for; the CRD
    # refuses the unpaid version itself as the base).
    retrain_unpaid = (p.training_refusal is not None and spec.retraining is not None
                      and spec.retraining.lora is not None
                      and spec.retraining.lora.base is not None)
    exhausted_retrain = (
        budget.problem is None and not p.fits
        and (p.training_refusal is None or retrain_unpaid)
        and spec.on_budget_exhausted == "Retrain" and spec.retraining is not None)
    # A DP-SGD / DP-LoRA model removes erased ids with its ordinary retrain, brought forward
    # for an Immediate request or a NextRetrain request's deadline (docs/erasure.md).
    erasure_retrain = (budget.problem is None and spec.retraining is not None
                       and unlearn.dpsgd_due(model, status.erasure, erasures, sb.now))
    pate_erasure = (budget.problem is None and status.retrain_job is None
                    and unlearn.pate_due(model, status.erasure, erasures))
    if (exhausted_retrain or erasure_retrain or pate_erasure) and erasures.problem is not None:
        sb.set(ms.RETRAINING, "False", "ErasureListDamaged", erasures.problem)
    elif (exhausted_retrain or erasure_retrain) and p.decision.ok and not erasure_job:
        model.status = status
        bctx = _build_ctx(ctx, model, budget, 0, p.decision, erased_ids)
        step = await retrain.step(ctx, model, p.raw, sb, bctx, budget.raw or {})
        p.in_retraining = step.in_progress and exhausted_retrain
        p.requeue_after = step.requeue_after_s
        if step.rolled:  # now on the new version's budget
            p.version = status.model_version or p.version
            p.budget = await _budget(ctx, p.namespace, status.budget or spec.budget_ref.name,
                                     p.name)
            p.fits = p.budget.problem is None and _fits(ctx, model, p.budget)
    elif pate_erasure and p.decision.ok:
        # A PATE ensemble: only the teachers that saw an erased record retrain; the new
        # version serves on the same budget (same data window, nothing refunded).
        model.status = status
        bctx = _build_ctx(ctx, model, budget, 0, p.decision, erased_ids)
        spent = budget.status.epsilon_spent if budget.status else None
        unlearned = await unlearn.step(ctx, model, sb, bctx, budget.name, spent)
        p.requeue_after = unlearned.requeue_after_s
        if unlearned.notice is not None:
            p.notices.append(ms.Transition("Normal", "ErasureRolledOut", unlearned.notice))
        if unlearned.rolled:
            p.version = status.model_version or p.version


def _budget_available(p: _Pass) -> None:
    """BudgetAvailable, evaluated whatever else blocks the model."""
    budget, sb = p.budget, p.sb
    limit = budget.spec.epsilon if budget.spec else "?"
    spent = budget.status.epsilon_spent if budget.status else None
    if budget.problem is not None:
        sb.set(ms.BUDGET_AVAILABLE, "False", *budget.problem)
    elif p.training_refusal is not None:
        sb.set(ms.BUDGET_AVAILABLE, "False", "TrainingSpendExceedsBudget", p.training_refusal)
    elif not p.fits:
        sb.set(ms.BUDGET_AVAILABLE, "False", "BudgetExhausted",
               f"PrivacyBudget {budget.name} cannot pay one more {_mechanism_name(p.model)} "
               f"query (ε spent {spent or '0'} of {limit})")
        if not _says_exhausted(budget.raw):
            # The budget may have probed before this model was bound: let it probe again.
            version = ((budget.raw or {}).get("metadata") or {}).get("resourceVersion")
            p.ctx.probe_budget((p.namespace, budget.name),
                               None if version is None else str(version), (p.namespace, p.name))
    else:
        sb.set(ms.BUDGET_AVAILABLE, "True", "BudgetAvailable",
               f"PrivacyBudget {budget.name}: ε spent {spent or '0'} of {limit}")


def _says_exhausted(raw: Obj | None) -> bool:
    conditions = ((raw or {}).get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Exhausted" and c.get("status") == "True" for c in conditions)


async def _serve(p: _Pass, replicas: int, phase: Phase) -> int:
    """Owned objects rendered from the status' version / artifact / budget, then Ready and
    the phase from what runs; returns the ready replicas."""
    ctx, model, sb, budget = p.ctx, p.model, p.sb, p.budget
    status = sb.status
    status.budget = budget.name
    status.model_version = p.version
    status.artifact = status.artifact or model.spec.model.artifact
    model.status = status
    ledger = await ledger_address(ctx)
    try:
        if ledger.problem is not None:
            # Without the ledger's address the pods could not lease (they have no DNS):
            # the serving objects are left as they are, the model says why, and it is
            # looked at again (the Service may be on its way: an install in progress).
            applied = {}
            p.requeue_after = min(p.requeue_after or LEDGER_RETRY_S, LEDGER_RETRY_S)
        else:
            applied = await apply_serving(
                ctx.api, model, _build_ctx(ctx, model, budget, replicas, p.decision,
                                           ledger_ips=ledger.ips),
                str(p.raw["metadata"].get("uid", "")), ctx.metrics, ctx.live)
    except NotOwned as exc:
        sb.set(ms.READY, "False", "ResourceConflict", str(exc))
        status.phase = "Failed"
        applied = {}
    except ValueError as exc:  # a builder refused the object: surfaced like an invalid spec
        await _invalid(ctx, p.raw, str(exc))
        raise InvalidSpec(str(exc)) from exc

    if ledger.problem is not None:
        sb.set(ms.READY, "False", LEDGER_UNAVAILABLE, ledger.problem)
        status.phase = "Pending"
        return 0
    if status.phase == "Failed" and not applied:
        return 0
    if replicas == 0:
        zero = servingstate.scaled_to_zero(phase, blocked_reason=p.decision.reason,
                                           pending_reason=(budget.problem or ("", ""))[0])
        sb.set(ms.READY, "False", zero.reason, zero.message)
        status.phase = zero.phase
        return 0
    deployment = applied["Deployment"].live if "Deployment" in applied else None
    pods = await ctx.api.list(PODS, p.namespace, label_selector=_selector(p.name))
    readiness = serving_readiness(replicas, deployment, pods)
    sb.set(ms.READY, "True" if readiness.ready else "False", readiness.reason,
           readiness.message)
    status.phase = servingstate.running_phase(phase, readiness.ready)
    return readiness.ready_replicas


async def _finish(p: _Pass, read: statusfields.StatusRead, replicas: int,
                  ready_replicas: int) -> None:
    """The status' remaining fields, written once if it changed; Events for what changed;
    the replicas metric; a requeue where a phase asked for one."""
    ctx, sb, budget = p.ctx, p.sb, p.budget
    status, namespace, name = sb.status, p.namespace, p.name
    if p.refused is not None:  # still serving what was accepted; a person must act
        sb.set(ms.READY, "False", kstatus.SPEC_EDIT_REFUSED,
               f"{p.refused}; still serving {status.model_version} from budget {status.budget}")
    if status.accepted is not None:
        has_spent = bool(status.versions) or (budget.status is not None and any(
            e.consumer == model_key(namespace, name) for e in budget.status.ledger))
        if has_spent and not status.accepted.spent:
            status.accepted = status.accepted.model_copy(update={"spent": True})
    status.replicas = replicas
    status.ready_replicas = ready_replicas
    status.selector = _selector(name)
    status.endpoint = f"http://{service_name(name)}.{namespace}.svc:{FILTER_PORT}"
    status.epsilon_spent = budget.status.epsilon_spent if budget.status else None
    status.epsilon_limit = budget.spec.epsilon if budget.spec else None
    status.lifetime_epsilon = retrainstate.lifetime_epsilon(
        status.versions, budget.name, status.epsilon_spent, status.dropped_versions_epsilon)
    new = statusfields.with_extras(sb.finish().wire(), read)
    if await _update_status(ctx, p.raw, new):
        for t in [*p.notices, *sb.transitions()]:
            await ctx.api.event(p.raw, type=t.type, reason=t.reason, message=t.message,
                                now=_stamp())
    ctx.metrics.model_replicas.labels(namespace, name).set(replicas)
    if p.requeue_after is not None:
        ctx.kick_model(namespace, name, p.requeue_after)


async def _attested(ctx: OperatorContext, sb: ms.StatusBuilder, model: PrivateModel) -> None:
    """The Attested condition from the key set (checked here) and the ledger's last verdict.

    The ledger shares this process: what it saw is read from memory, and it kicks the
    model when a verdict changes. A verified token counts for maxAgeSeconds; the model is
    re-reconciled then, so a model whose pods stopped presenting tokens says so.
    """
    attestation = model.spec.confidential.attestation
    namespace, name = str(model.metadata["namespace"]), str(model.metadata["name"])
    if attestation is None:
        sb.remove(ms.ATTESTED)
        return
    gate = ctx.ledger.attestation
    seen = gate.seen(model_key(namespace, name))
    jwks_problem = seen.jwks_problem
    try:
        await gate.jwks(namespace, attestation)
        jwks_problem = None
    except JwksUnusable as exc:
        jwks_problem = str(exc)
    except LeaseFailure:
        pass  # the ConfigMap could not be read now: keep what the ledger last saw
    wall = now().timestamp()
    max_age = float(attestation.max_age_seconds)
    sb.set(ms.ATTESTED, *attested_condition(True, seen.last, now=wall, max_age_s=max_age,
                                            jwks_problem=jwks_problem))
    last = seen.last
    if last is not None and last.verdict.ok and wall - last.at <= max_age:
        ctx.kick_model(namespace, name, last.at + max_age - wall + 1.0)


def ms_phase(status: Any) -> str | None:
    return getattr(status, "phase", None)


def _selector(name: str) -> str:
    return ",".join(f"{k}={v}" for k, v in selector_labels(name, INFERENCE).items())


def _build_ctx(ctx: OperatorContext, model: PrivateModel, budget: BudgetView, replicas: int,
               decision: ConfidentialDecision, erased_ids: int = 0,
               ledger_ips: tuple[str, ...] = ()) -> Any:
    header = None
    if budget.spec is not None and budget.spec.partitions is not None:
        header = budget.spec.partitions.header
    return build_context(
        model,
        image=ctx.settings.inference_image,
        ledger_url=ctx.settings.ledger_url,
        operator_namespace=ctx.settings.operator_namespace,
        replicas=replicas,
        decision=decision,
        partition_header=header,
        image_pull_policy=ctx.settings.image_pull_policy,
        operator_pod_labels=ctx.settings.operator_pod_labels,
        allow_host_path_artifacts=ctx.settings.allow_host_path_artifacts,
        ledger_ca_pem=ctx.ledger_ca.pem() if ctx.ledger_ca is not None else None,
        erased_ids=erased_ids,
        ledger_ips=ledger_ips,
        dns_egress=ctx.settings.serving_dns_egress,
    )

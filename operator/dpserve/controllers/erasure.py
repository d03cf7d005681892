"""The ErasureRequest reconcile: list the ids for the model, report where the erasure stands.

fetch -> parse -> the target PrivateModel (missing: Pending; not retrainable: Failed) ->
its erased-id ConfigMap gets the request's ids (created owned by the model, replaced with
a resourceVersion precondition) -> the status decided by
:func:`dpserve.controllers.erasurestate.decide_request` from the model's status -> written
once, only if it changed; each newly reached outcome counted in
``ml_unlearning_requests_total{outcome}`` with an Event.

The retrain itself is the model's reconcile (``controllers/unlearn.py`` and ``retrain.py``):
writing the ConfigMap (a child the model owns) queues it.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from dpserve.api.erasurerequest import ErasureRequest, ErasureRequestStatus
from dpserve.api.privatemodel import ErasureStatus, PrivateModel
from dpserve.controllers import erasurestate as es
from dpserve.controllers.context import OperatorContext, now
from dpserve.controllers.kubeapi import CONFIGMAPS, ERASUREREQUESTS, PRIVATEMODELS, Conflict
from dpserve.controllers.parse import InvalidSpec, parse_model
from dpserve.ledger.conditions import parse_rfc3339, rfc3339
from dpserve.resources.labels import MANAGED_BY, MANAGED_BY_VALUE, MODEL, NAME, PART_OF
from dpserve.resources.names import erasure_configmap_name
from dpserve.resources.ownership import OwnerInfo, owner_references

Obj = dict[str, Any]
logger = logging.getLogger(__name__)


def erasure_configmap(model: PrivateModel, lst: es.ErasureList) -> Obj:
    """The model's erased-id ConfigMap (owned by the model: it goes only with the model)."""
    name = str(model.metadata["name"])
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": erasure_configmap_name(name),
            "namespace": str(model.metadata["namespace"]),
            "labels": {NAME: "dpserve", PART_OF: "dpserve", MANAGED_BY: MANAGED_BY_VALUE,
                       MODEL: name},
            "ownerReferences": owner_references(OwnerInfo.from_model(model)),
        },
        "data": es.render_list(lst),
    }


async def _list_ids(
    ctx: OperatorContext, model: PrivateModel, request: ErasureRequest, uid: str,
    deadline: datetime,
) -> es.Listed:
    """Append the request's ids to the model's list (idempotent); its entry."""
    namespace, name = str(model.metadata["namespace"]), str(model.metadata["name"])
    raw = await ctx.api.get(CONFIGMAPS, namespace, erasure_configmap_name(name))
    lst = es.parse_list(raw.get("data") if raw else None)
    entry = lst.entry(uid)
    if entry is not None:
        return entry
    spec = request.spec
    new = es.add_request(lst, request=str(request.metadata["name"]), uid=uid,
                         ids=spec.record_ids, mode=spec.mode, deadline=rfc3339(deadline))
    body = erasure_configmap(model, new)
    if raw is None:
        await ctx.api.create(CONFIGMAPS, namespace, body)
        ctx.metrics.api_writes.labels("ConfigMap", "create").inc()
    else:  # the precondition: two requests listing at once never drop each other's ids
        body["metadata"]["resourceVersion"] = raw["metadata"]["resourceVersion"]
        await ctx.api.replace(CONFIGMAPS, namespace, body["metadata"]["name"], body)
        ctx.metrics.api_writes.labels("ConfigMap", "update").inc()
    ctx.kick_model(namespace, name)
    listed = new.entry(uid)
    assert listed is not None
    return listed


async def reconcile_request(ctx: OperatorContext, namespace: str, name: str) -> float | None:
    """Reconcile one ErasureRequest; returns seconds until it should be looked at again."""
    raw = await ctx.api.get(ERASUREREQUESTS, namespace, name)
    if raw is None or raw["metadata"].get("deletionTimestamp"):
        return None
    meta = raw["metadata"]
    try:
        previous = ErasureRequestStatus.model_validate(raw.get("status") or {})
    except ValidationError:
        previous = ErasureRequestStatus()
    try:
        request = ErasureRequest.model_validate(
            {"spec": raw.get("spec"), "metadata": meta}, by_alias=True)
    except ValidationError as exc:
        raise InvalidSpec(f"invalid ErasureRequest: {exc.errors()[0]['msg']}") from exc
    created = parse_rfc3339(str(meta.get("creationTimestamp") or rfc3339(now())))
    moment = now()
    deadline = es.deadline_of(created, request.spec.deadline_days)
    model_name = request.spec.model_ref.name
    model_raw = await ctx.api.get(PRIVATEMODELS, namespace, model_name)
    facts: dict[str, Any] = {}
    if model_raw is None or model_raw["metadata"].get("deletionTimestamp"):
        facts = {"model_problem": f"PrivateModel {model_name} does not exist",
                 "model_missing": True}
    else:
        facts = await _model_facts(ctx, model_raw, request, str(meta.get("uid", name)),
                                   deadline)
    decision = es.decide_request(
        es.RequestFacts(record_ids=len(request.spec.record_ids), mode=request.spec.mode,
                        created=created, deadline_days=request.spec.deadline_days,
                        now=moment, generation=meta.get("generation"),
                        spec_ids_sha256=es.ids_sha256(request.spec.record_ids), **facts),
        previous)
    overdue = any(c.type == es.OVERDUE and c.status == "True"
                  for c in decision.status.conditions)
    ctx.metrics.erasure_overdue.labels(namespace, name).set(1 if overdue else 0)
    new = decision.status.wire()
    if new != (raw.get("status") or {}):
        await ctx.api.replace(ERASUREREQUESTS, namespace, name, {**raw, "status": new},
                              subresource="status")
        ctx.metrics.api_writes.labels("ErasureRequest", "status").inc()
        refused = next((c for c in decision.status.conditions
                        if c.type == es.ACCEPTED and c.reason == "SpecEditRefused"), None)
        was_refused = any(c.type == es.ACCEPTED and c.reason == "SpecEditRefused"
                          for c in previous.conditions)
        if refused is not None and not was_refused:
            await ctx.api.event(raw, type="Warning", reason="SpecEditRefused",
                                message=refused.message, now=rfc3339(moment))
        for outcome in decision.outcomes:
            ctx.metrics.unlearning_requests_total.labels(outcome).inc()
            await ctx.api.event(raw, type="Normal" if outcome == "completed" else "Warning",
                                reason={"completed": "ErasureCompleted",
                                        "failed": "ErasureFailed",
                                        "overdue": "ErasureOverdue"}[outcome],
                                message=_outcome_message(decision.status, outcome),
                                now=rfc3339(moment))
    return decision.requeue_after_s


async def _model_facts(
    ctx: OperatorContext, model_raw: Obj, request: ErasureRequest, uid: str,
    deadline: datetime,
) -> dict[str, Any]:
    try:
        model = parse_model(model_raw)
    except InvalidSpec as exc:
        return {"model_problem": f"PrivateModel {request.spec.model_ref.name} is invalid: {exc}"}
    mechanism = model.spec.serving.mechanism
    teachers = mechanism.teachers if model.spec.model.format == "pate-ensemble" else None
    erasure: ErasureStatus | None = None
    try:
        erasure = ErasureStatus.model_validate(
            (model_raw.get("status") or {}).get("erasure") or {})
    except ValidationError:
        erasure = None
    if model.spec.retraining is None:
        return {"model_problem": (
            f"PrivateModel {request.spec.model_ref.name} has no spec.retraining: the erasure "
            "retrains the model from spec.retraining.dataset without the records; add a "
            "retraining section (onBudgetExhausted may stay ScaleToZero)"),
            "teachers": teachers, "erasure": erasure}
    try:
        async with ctx.lock(("erasure-list", model.metadata["namespace"],
                             model.metadata["name"])):
            listed = await _list_ids(ctx, model, request, uid, deadline)
    except es.ErasureListError as exc:
        return {"model_problem": f"the erased-id list of {request.spec.model_ref.name}: {exc}",
                "teachers": teachers, "erasure": erasure}
    except Conflict:
        raise  # retried by the handler shortly
    return {"listed": listed, "teachers": teachers, "erasure": erasure}


def _outcome_message(status: ErasureRequestStatus, outcome: str) -> str:
    if outcome == "completed":
        return (f"records removed in version {status.removed_in_version} "
                f"(training set sha256 {status.training_set_sha256}); no ε refunded")
    if outcome == "overdue":
        return f"deadline {status.deadline} passed; phase {status.phase}"
    complete = next((c for c in status.conditions if c.type == es.COMPLETE), None)
    return complete.message if complete is not None else "failed"


async def reconcile_model_requests(ctx: OperatorContext, namespace: str, model: str) -> None:
    """Every request of ``model``: after its erasure status changed (a roll, a failure)."""
    for item in await ctx.api.list(ERASUREREQUESTS, namespace):
        if ((item.get("spec") or {}).get("modelRef") or {}).get("name") != model:
            continue
        phase = (item.get("status") or {}).get("phase")
        if phase == "Completed":
            continue
        try:
            await reconcile_request(ctx, namespace, str(item["metadata"]["name"]))
        except (InvalidSpec, Conflict) as exc:
            logger.info("erasure request %s/%s: %s", namespace, item["metadata"]["name"], exc)

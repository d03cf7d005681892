"""The PrivacyBudget reconcile: status through the ledger, deletion protection by finalizer.

The status is written only by the ledger (:meth:`LedgerService.recompute`, the same
read-compute-write path with the resourceVersion precondition that grants leases use), so
the budget has a single writer logic. This module adds the ``dpserve.io/budget-protection``
finalizer (as Kubernetes' pvc-protection does): a budget stays while a PrivateModel
spends it, and its deletion is surfaced with a Warning Event naming the models.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from dpserve.accounting.events import Event
from dpserve.api.mechanism import Mechanism
from dpserve.controllers.context import ModelKey, OperatorContext, now
from dpserve.controllers.kubeapi import PRIVACYBUDGETS, PRIVATEMODELS, Conflict
from dpserve.ledger import events as ledger_events
from dpserve.ledger import state as ledger_state
from dpserve.ledger.conditions import rfc3339
from dpserve.ledger.store import NotFound

PROTECTION_FINALIZER = "dpserve.io/budget-protection"
RECHECK_S = 30.0
Obj = dict[str, Any]
logger = logging.getLogger(__name__)


def probes(mechanisms: Iterable[Any]) -> list[Event]:
    """Query events of the bound models' mechanisms (wire dicts), for the Exhausted probe."""
    out: list[Event] = []
    for wire in mechanisms:
        try:
            event = ledger_events.mechanism_event(Mechanism.model_validate(wire or {}))
        except ledger_state.ACCOUNTING_ERRORS:
            # A mechanism whose numbers cannot make an event (e.g. a sensitivity that
            # underflows to 0.0) is not a probe; its model reports AccountingFailed itself.
            continue
        if event is not None and event not in out:
            out.append(event)
    return out


def spent_budgets(spec: Obj, status: Obj) -> set[str]:
    """The budgets a model spends now: its spec's, and the one its current version is on
    (the ``models_by_budget`` index and the probes of Exhausted)."""
    named = {(spec.get("budgetRef") or {}).get("name"), status.get("budget")}
    return {b for b in named if b}


def uses(model: Obj, budget: str) -> bool:
    """The model spends ``budget``, or did: a retired version's budget stays protected.

    The model's lifetime ε is read from the budgets of its retired versions
    (``status.versions[].budget``): deleting one would lose spend that still counts.
    """
    status = model.get("status") or {}
    named = spent_budgets(model.get("spec") or {}, status)
    versions = status.get("versions")
    if isinstance(versions, list):
        named |= {str(v["budget"]) for v in versions if isinstance(v, dict) and v.get("budget")}
    return budget in named


async def ensure_protection(ctx: OperatorContext, raw: Obj) -> None:
    meta = raw["metadata"]
    finalizers = list(meta.get("finalizers") or [])
    if PROTECTION_FINALIZER in finalizers or meta.get("deletionTimestamp"):
        return
    patch = {"metadata": {"finalizers": [*finalizers, PROTECTION_FINALIZER],
                          "resourceVersion": meta["resourceVersion"]}}
    await ctx.api.patch(PRIVACYBUDGETS, meta["namespace"], meta["name"], patch)
    ctx.metrics.api_writes.labels("PrivacyBudget", "finalizer").inc()


async def reconcile_budget(
    ctx: OperatorContext, namespace: str, name: str, mechanisms: Iterable[Any] = (),
    models: list[Obj] | None = None,
) -> None:
    """Create / spec change / resume: finalizer, then the status through the ledger.

    ``models``: the namespace's PrivateModels when the caller has just listed them (the
    work queue), so that a budget being deleted is not listed for twice per recheck.
    """
    async with ctx.lock(("PrivacyBudget", namespace, name)):
        started = time.monotonic()
        ctx.metrics.reconciles.labels("PrivacyBudget").inc()
        try:
            raw = await ctx.api.get(PRIVACYBUDGETS, namespace, name)
            if raw is None:
                return
            if raw["metadata"].get("deletionTimestamp"):
                await _release_if_unused(ctx, raw, models)
                return
            await ensure_protection(ctx, raw)
            try:
                await ctx.ledger.recompute(namespace, name, probes(mechanisms))
            except NotFound:
                return
        finally:
            ctx.metrics.reconcile_seconds.labels("PrivacyBudget").observe(
                time.monotonic() - started
            )


def bound_mechanisms(models: Iterable[Obj], budget: str) -> list[Any]:
    """Mechanisms of the models that spend ``budget`` now (as the ``models_by_budget`` index)."""
    out = []
    for model in models:
        spec = model.get("spec") or {}
        if budget in spent_budgets(spec, model.get("status") or {}):
            out.append((spec.get("serving") or {}).get("mechanism"))
    return out


async def queue_handler(ctx: OperatorContext, key: ModelKey) -> None:
    """Work-queue entry point: the reconcile again, probing the models bound now.

    Kopf's handler probes the models its index holds when the budget event arrives; a model
    indexed after that (the two watches are not ordered) would leave Exhausted stale until
    the budget changed, so a model that finds its budget cannot pay kicks this queue. A
    budget being deleted goes here once no model uses it.
    """
    namespace, name = key
    models = await ctx.api.list(PRIVATEMODELS, namespace)
    await reconcile_budget(ctx, namespace, name, bound_mechanisms(models, name), models)


_warned: dict[ModelKey, tuple[str, ...]] = {}


async def _release_if_unused(ctx: OperatorContext, raw: Obj, models: list[Obj] | None) -> None:
    meta = raw["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    finalizers = list(meta.get("finalizers") or [])
    if PROTECTION_FINALIZER not in finalizers:
        return
    if models is None:
        models = await ctx.api.list(PRIVATEMODELS, namespace)
    users = tuple(sorted(
        m["metadata"]["name"] for m in models
        if uses(m, name) and not m["metadata"].get("deletionTimestamp")
    ))
    if users:
        if _warned.get((namespace, name)) != users:
            _warned[(namespace, name)] = users
            await ctx.api.event(
                raw, type="Warning", reason="DeletionBlocked",
                message=f"PrivacyBudget {name} is in use by PrivateModel {', '.join(users)}: "
                "it is deleted once they no longer reference it",
                now=rfc3339(now()),
            )
        ctx.kick_budget(namespace, name, RECHECK_S)
        return
    _warned.pop((namespace, name), None)
    remaining = [f for f in finalizers if f != PROTECTION_FINALIZER]
    patch = {"metadata": {"finalizers": remaining or None,
                          "resourceVersion": meta["resourceVersion"]}}
    try:
        await ctx.api.patch(PRIVACYBUDGETS, namespace, name, patch)
    except Conflict:
        ctx.kick_budget(namespace, name)
        return
    ctx.metrics.api_writes.labels("PrivacyBudget", "finalizer").inc()
    await ctx.api.event(raw, type="Normal", reason="DeletionReleased",
                        message=f"PrivacyBudget {name} is no longer used: released",
                        now=rfc3339(now()))

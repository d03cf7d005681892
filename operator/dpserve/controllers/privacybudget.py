"""Kopf handlers of PrivacyBudget: status through the ledger, protection, and waking models.

A change of the budget's status (a lease spent ε, a spec edit raised it) must reach the
PrivateModels bound to it within seconds: the raw event handler compares what matters with
what it saw last and queues those models' reconciles.
"""

from __future__ import annotations

from typing import Any

import kopf

from dpserve import API_GROUP, API_VERSION
from dpserve.controllers.budget import reconcile_budget
from dpserve.controllers.context import OperatorContext
from dpserve.controllers.kubeapi import ApiError, Conflict

PLURAL = "privacybudgets"
# Mirroring ε spent into model status only needs to be roughly current; exhaustion-relevant
# changes (spec, Exhausted condition) go at the queue's default debounce.
MIRROR_DELAY_S = 1.0


def _ctx(memo: Any) -> OperatorContext:
    ctx: OperatorContext = memo.ctx
    return ctx


def _bound(index: Any, namespace: str, name: str) -> list[dict[str, Any]]:
    found = index.get((namespace, name)) if index is not None else None
    return list(found or [])


@kopf.on.resume(API_GROUP, API_VERSION, PLURAL)
@kopf.on.create(API_GROUP, API_VERSION, PLURAL)
@kopf.on.update(API_GROUP, API_VERSION, PLURAL)
async def reconcile(namespace: str | None, name: str, memo: Any, **kwargs: Any) -> None:
    assert namespace is not None  # PrivacyBudget is namespaced
    index = kwargs.get("models_by_budget")
    mechanisms = [m["mechanism"] for m in _bound(index, namespace, name)]
    try:
        await reconcile_budget(_ctx(memo), namespace, name, mechanisms)
    except Conflict as exc:
        raise kopf.TemporaryError(f"conflict, retrying: {exc}", delay=1) from exc
    except ApiError as exc:
        raise kopf.TemporaryError(f"API error, retrying: {exc}", delay=5) from exc


def _signature(body: Any) -> tuple[Any, ...]:
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    exhausted = next((c.get("status") for c in status.get("conditions") or []
                      if c.get("type") == "Exhausted"), None)
    return (body.get("metadata", {}).get("generation"), spec.get("epsilon"), exhausted)


@kopf.on.event(API_GROUP, API_VERSION, PLURAL)
async def budget_changed(event: Any, body: Any, namespace: str | None, name: str, memo: Any,
                         **kwargs: Any) -> None:
    assert namespace is not None
    ctx = _ctx(memo)
    key = (namespace, name)
    bound = _bound(kwargs.get("models_by_budget"), namespace, name)
    if event.get("type") == "DELETED":
        ctx.budget_seen.pop(key, None)
        for model in bound:
            ctx.kick_model(namespace, model["name"])
        return
    if body.get("metadata", {}).get("deletionTimestamp"):
        ctx.kick_budget(namespace, name, 0.0)
    signature = _signature(body)
    spent = (body.get("status") or {}).get("epsilonSpent")
    previous = ctx.budget_seen.get(key)
    ctx.budget_seen[key] = (*signature, spent)
    if previous is None or previous[:-1] != signature:
        delay = None
    elif previous[-1] != spent:
        delay = MIRROR_DELAY_S
    else:
        return
    version = body.get("metadata", {}).get("resourceVersion")
    for model in bound:
        if not ctx.echoes.has_read_budget(namespace, model["name"], name, version):
            ctx.kick_model(namespace, model["name"], delay)

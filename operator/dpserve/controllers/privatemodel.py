"""Kopf handlers of PrivateModel: thin wrappers around ``model.reconcile_model``.

Every cause (create, spec/label change, operator restart) runs the same reconcile. An
invalid object becomes a permanent error after its condition and Event are written (never a
crash loop); a 409 conflict retries shortly.
"""

from __future__ import annotations

import contextlib
from typing import Any

import kopf

from dpserve import API_GROUP, API_VERSION
from dpserve.controllers.budget import spent_budgets
from dpserve.controllers.context import OperatorContext
from dpserve.controllers.kubeapi import ApiError, Conflict
from dpserve.controllers.model import reconcile_model
from dpserve.controllers.parse import InvalidSpec

PLURAL = "privatemodels"


def _ctx(memo: Any) -> OperatorContext:
    ctx: OperatorContext = memo.ctx
    return ctx


@kopf.index(API_GROUP, API_VERSION, PLURAL)
def models_by_budget(
    namespace: str | None, name: str, spec: Any, status: Any, **_: Any
) -> dict[tuple[str | None, str], dict[str, Any]]:
    """(namespace, budget) -> the models spending it (spec's budget and the current one)."""
    entry = {
        "name": name,
        "mechanism": dict((spec.get("serving") or {}).get("mechanism") or {}),
        "phase": status.get("phase"),
    }
    return {(namespace, b): entry for b in spent_budgets(spec, status)}


@kopf.on.resume(API_GROUP, API_VERSION, PLURAL)
@kopf.on.create(API_GROUP, API_VERSION, PLURAL)
@kopf.on.update(API_GROUP, API_VERSION, PLURAL)
async def reconcile(namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    assert namespace is not None  # PrivateModel is namespaced
    try:
        await reconcile_model(_ctx(memo), namespace, name)
    except InvalidSpec as exc:
        raise kopf.PermanentError(f"invalid PrivateModel: {exc}") from exc
    except Conflict as exc:
        raise kopf.TemporaryError(f"conflict, retrying: {exc}", delay=1) from exc
    except ApiError as exc:
        raise kopf.TemporaryError(f"API error, retrying: {exc}", delay=5) from exc


@kopf.on.delete(API_GROUP, API_VERSION, PLURAL)
async def deleted(namespace: str | None, name: str, spec: Any, status: Any, memo: Any,
                  **_: Any) -> None:
    """Owned objects go by garbage collection; the budgets it used may be released now
    (its retired versions' budgets too: they were protected for its lifetime ε)."""
    assert namespace is not None
    ctx = _ctx(memo)
    budgets = {(spec.get("budgetRef") or {}).get("name"), status.get("budget")}
    budgets |= {v.get("budget") for v in status.get("versions") or [] if isinstance(v, dict)}
    for budget in budgets:
        if budget:
            ctx.kick_budget(namespace, budget, 1.0)
    ctx.echoes.forget_model(namespace, name)
    for key in [k for k in ctx.budget_probed if k[1] == (namespace, name)]:
        del ctx.budget_probed[key]
    with contextlib.suppress(KeyError):
        ctx.metrics.model_replicas.remove(namespace, name)

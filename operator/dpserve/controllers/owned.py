"""Drift correction: any event on an object the operator owns queues its model's reconcile.

Raw event handlers (no finalizers, no annotations written on the owned objects), filtered by
the managed-by label; the reconcile re-applies what was edited or deleted by hand, and picks
up Deployment availability, pod crash loops and Job completion. The kinds come from
:data:`dpserve.resources.access.OWNED_KINDS`; every watch here needs list and watch in that
module's ``ACCESS`` (the chart's RBAC), which ``tests/chart/test_chart_rbac.py`` checks.
"""

from __future__ import annotations

from typing import Any

import kopf

from dpserve.controllers.context import OperatorContext
from dpserve.resources.access import NODES, OWNED_KINDS, PODS, RUNTIMECLASSES, Res
from dpserve.resources.labels import MANAGED_BY, MANAGED_BY_VALUE, MODEL

MANAGED = {MANAGED_BY: MANAGED_BY_VALUE}


async def _kick(labels: Any, namespace: str | None, memo: Any) -> None:
    model = labels.get(MODEL)
    if model and namespace:
        ctx: OperatorContext = memo.ctx
        ctx.kick_model(namespace, model)


def _register(kind: str, res: Res) -> None:
    async def changed(labels: Any, namespace: str | None, name: str, event: Any, memo: Any,
                      **_: Any) -> None:
        # Kept for the reconciles; the answer to a reconcile's own write, which it already
        # used, wakes no one.
        ctx: OperatorContext = memo.ctx
        obj = None if event.get("type") == "DELETED" else event.get("object")
        if namespace and ctx.live.seen(kind, namespace, name, obj):
            return
        await _kick(labels, namespace, memo)

    async def unmanaged(namespace: str | None, name: str, memo: Any, **_: Any) -> None:
        # Outside the label filter above (e.g. the label was removed): no more events reach
        # the cache for it, so it must not answer for the object any longer.
        if namespace:
            ctx: OperatorContext = memo.ctx
            ctx.live.forget(kind, namespace, name)

    def cached_but_unmanaged(labels: Any, namespace: str | None, name: str, memo: Any,
                             **_: Any) -> bool:
        # Every other object of the kind in the watched namespaces passes this filter only:
        # no handler runs for them.
        return bool(namespace and labels.get(MANAGED_BY) != MANAGED_BY_VALUE
                    and memo.ctx.live.holds(kind, namespace, name))

    changed.__name__ = f"owned_{res.plural}"
    unmanaged.__name__ = f"unmanaged_{res.plural}"
    kopf.on.event(res.group, res.version, res.plural, labels=MANAGED,
                  id=f"owned-{res.plural}")(changed)
    kopf.on.event(res.group, res.version, res.plural, when=cached_but_unmanaged,
                  id=f"unmanaged-{res.plural}")(unmanaged)


for _owned in OWNED_KINDS:
    _register(_owned.kind, _owned.res)


@kopf.on.event(PODS.group, PODS.version, PODS.plural, labels={MODEL: kopf.PRESENT})
async def pod_changed(labels: Any, namespace: str | None, memo: Any, **_: Any) -> None:
    """Pods carry the model label from their template: crash loops flip Ready."""
    await _kick(labels, namespace, memo)


_node_labels: dict[str, dict[str, str]] = {}


def _kick_blocked(memo: Any, index: Any) -> None:
    """A placement input changed: models that could not be placed are looked at again."""
    ctx: OperatorContext = memo.ctx
    ctx.cluster.invalidate()
    for (namespace, _budget), entries in (index or {}).items():
        for entry in entries:
            if entry.get("phase") == "Blocked":
                ctx.kick_model(namespace, entry["name"])


@kopf.on.event(RUNTIMECLASSES.group, RUNTIMECLASSES.version, RUNTIMECLASSES.plural)
async def runtime_class_changed(memo: Any, **kwargs: Any) -> None:
    _kick_blocked(memo, kwargs.get("models_by_budget"))


@kopf.on.event(NODES.group, NODES.version, NODES.plural)
async def node_changed(name: str, labels: Any, event: Any, memo: Any, **kwargs: Any) -> None:
    """Nodes change often (heartbeats); only a change of labels or presence matters here."""
    current = None if event.get("type") == "DELETED" else dict(labels)
    if _node_labels.get(name) == current:
        return
    if current is None:
        _node_labels.pop(name, None)
    else:
        _node_labels[name] = current
    _kick_blocked(memo, kwargs.get("models_by_budget"))

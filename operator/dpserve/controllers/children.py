"""One reconciler per owned kind: build desired, read live, then create / skip / replace.

The kinds, their builders and their order come from :data:`dpserve.resources.access.OWNED_KINDS`.

Skipping is the common case: ``needs_update`` false means no write at all, which is what
keeps a steady state at zero API writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from dpserve.api.privatemodel import PrivateModel
from dpserve.controllers.echoes import Echoes
from dpserve.controllers.kubeapi import BY_KIND, ApiError, Conflict, KubeApi
from dpserve.metrics import OperatorMetrics
from dpserve.resources import BuildContext, merge_for_update, needs_update
from dpserve.resources.access import SERVING_KINDS

Obj = dict[str, Any]
Action = Literal["created", "updated", "unchanged", "deleted", "absent"]


class NotOwned(Exception):
    """An object with the child's name exists and another controller owns it."""


@dataclass
class Applied:
    kind: str
    name: str
    action: Action
    live: Obj | None


def _foreign_controller(live: Obj, owner_uid: str) -> str | None:
    for ref in (live.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller") and ref.get("uid") != owner_uid:
            return f"{ref.get('kind')}/{ref.get('name')}"
    return None


def _resource_version(obj: Obj | None) -> str | None:
    version = ((obj or {}).get("metadata") or {}).get("resourceVersion")
    return str(version) if version is not None else None


async def apply(api: KubeApi, kind: str, desired: Obj, owner_uid: str,
                metrics: OperatorMetrics | None = None, echoes: Echoes | None = None) -> Applied:
    """Create, skip or replace one child; ``echoes`` (given by the model reconcile, which
    uses the answer) records the version written, so its watch event wakes no one."""
    res = BY_KIND[kind]
    meta = desired["metadata"]
    namespace, name = meta.get("namespace"), meta["name"]
    live = await api.get(res, namespace, name)
    if live is None:
        try:
            created = await api.create(res, namespace, desired)
        except Conflict:  # created meanwhile (a concurrent reconcile): compare next time
            return Applied(kind, name, "unchanged", await api.get(res, namespace, name))
        if metrics:
            metrics.api_writes.labels(kind, "create").inc()
        if echoes is not None:
            echoes.wrote(kind, namespace, name, _resource_version(created))
        return Applied(kind, name, "created", created)
    foreign = _foreign_controller(live, owner_uid)
    if foreign is not None:
        raise NotOwned(f"{kind} {namespace}/{name} exists and is controlled by {foreign}")
    if (live.get("metadata") or {}).get("deletionTimestamp"):
        return Applied(kind, name, "unchanged", live)  # recreated once it is gone
    if not needs_update(desired, live):
        return Applied(kind, name, "unchanged", live)
    updated = await api.replace(res, namespace, name, merge_for_update(desired, live))
    if metrics:
        metrics.api_writes.labels(kind, "replace").inc()
    if echoes is not None:
        echoes.wrote(kind, namespace, name, _resource_version(updated))
    return Applied(kind, name, "updated", updated)


async def remove(api: KubeApi, kind: str, namespace: str, name: str, owner_uid: str,
                 metrics: OperatorMetrics | None = None) -> Applied:
    """Delete an owned child the model no longer needs (only if we own it)."""
    res = BY_KIND[kind]
    live = await api.get(res, namespace, name)
    if live is None:
        return Applied(kind, name, "absent", None)
    refs = (live.get("metadata") or {}).get("ownerReferences") or []
    if not any(r.get("uid") == owner_uid for r in refs):
        return Applied(kind, name, "absent", live)
    try:
        await api.delete(res, namespace, name)
    except ApiError as exc:
        if exc.status != 404:
            raise
    if metrics:
        metrics.api_writes.labels(kind, "delete").inc()
    return Applied(kind, name, "deleted", None)


async def apply_serving(api: KubeApi, model: PrivateModel, ctx: BuildContext, owner_uid: str,
                        metrics: OperatorMetrics | None = None,
                        echoes: Echoes | None = None) -> dict[str, Applied]:
    """Every serving child; returns them by kind."""
    namespace = str(model.metadata["namespace"])
    out: dict[str, Applied] = {}
    for owned in SERVING_KINDS:
        assert owned.builder is not None
        kind = owned.kind
        desired = owned.builder(model, ctx)
        if desired is None:
            if owned.removed_name is not None:
                name = owned.removed_name(str(model.metadata["name"]))
                out[kind] = await remove(api, kind, namespace, name, owner_uid, metrics)
            continue
        out[kind] = await apply(api, kind, desired, owner_uid, metrics, echoes)
    return out

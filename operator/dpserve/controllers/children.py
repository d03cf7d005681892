"""One reconciler per owned kind: build desired, read live, then create / skip / replace.

The kinds, their builders and their order come from :data:`dpserve.resources.access.OWNED_KINDS`.

Skipping is the common case: ``needs_update`` false means no write at all, which is what
keeps a steady state at zero API writes.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Literal

from dpserve.api.privatemodel import PrivateModel
from dpserve.controllers.kubeapi import BY_KIND, ApiError, Conflict, KubeApi
from dpserve.controllers.livecache import LiveCache
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


async def _written(cache: LiveCache | None, kind: str, namespace: str, name: str,
                   call: Awaitable[Obj]) -> Obj:
    """Send a create or replace; the cache holds the answer (or forgets the object)."""
    if cache is None:
        return await call
    cache.writing(kind, namespace, name)
    try:
        answer = await call
    except BaseException:
        cache.wrote(kind, namespace, name, None)
        raise
    cache.wrote(kind, namespace, name, answer)
    return answer


async def _live(api: KubeApi, cache: LiveCache | None, kind: str, namespace: str,
                name: str) -> Obj | None:
    """The child as the watch or the last write showed it, else read from the server."""
    known = cache.get(kind, namespace, name) if cache is not None else None
    if known is not None:
        return known
    return await api.get(BY_KIND[kind], namespace, name)


async def apply(api: KubeApi, kind: str, desired: Obj, owner_uid: str,
                metrics: OperatorMetrics | None = None,
                cache: LiveCache | None = None) -> Applied:
    """Create, skip or replace one child. ``cache`` (the model reconcile's): the child is
    compared with what the watch last showed, and the answer to a write is kept, so the
    write's own watch event wakes no one."""
    res = BY_KIND[kind]
    meta = desired["metadata"]
    namespace, name = meta.get("namespace"), meta["name"]
    live = await _live(api, cache, kind, namespace, name)
    if live is None:
        try:
            created = await _written(cache, kind, namespace, name,
                                     api.create(res, namespace, desired))
        except Conflict:  # created meanwhile (a concurrent reconcile): compare next time
            return Applied(kind, name, "unchanged", await api.get(res, namespace, name))
        if metrics:
            metrics.api_writes.labels(kind, "create").inc()
        return Applied(kind, name, "created", created)
    foreign = _foreign_controller(live, owner_uid)
    if foreign is not None:
        raise NotOwned(f"{kind} {namespace}/{name} exists and is controlled by {foreign}")
    if (live.get("metadata") or {}).get("deletionTimestamp"):
        return Applied(kind, name, "unchanged", live)  # recreated once it is gone
    if not needs_update(desired, live):
        return Applied(kind, name, "unchanged", live)
    # A stale cached child makes the server refuse this (409, resourceVersion): the
    # cache then forgets it and the retried reconcile reads it.
    updated = await _written(cache, kind, namespace, name,
                             api.replace(res, namespace, name, merge_for_update(desired, live)))
    if metrics:
        metrics.api_writes.labels(kind, "replace").inc()
    return Applied(kind, name, "updated", updated)


async def remove(api: KubeApi, kind: str, namespace: str, name: str, owner_uid: str,
                 metrics: OperatorMetrics | None = None,
                 cache: LiveCache | None = None) -> Applied:
    """Delete an owned child the model no longer needs (only if we own it)."""
    res = BY_KIND[kind]
    live = await api.get(res, namespace, name)
    if live is None:
        return Applied(kind, name, "absent", None)
    refs = (live.get("metadata") or {}).get("ownerReferences") or []
    if not any(r.get("uid") == owner_uid for r in refs):
        return Applied(kind, name, "absent", live)
    if cache is not None:
        cache.forget(kind, namespace, name)
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
                        cache: LiveCache | None = None) -> dict[str, Applied]:
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
                out[kind] = await remove(api, kind, namespace, name, owner_uid, metrics,
                                         cache)
            continue
        out[kind] = await apply(api, kind, desired, owner_uid, metrics, cache)
    return out

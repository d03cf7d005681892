"""An in-memory :class:`dpserve.ledger.store.Store` for tests and benchmarks, with faults.

Same resourceVersion semantics as the API server (a status write with a stale
resourceVersion is refused with Conflict), plus injectable faults the ledger's retry and
lease-id logic must survive. Test infrastructure: part of the dpserve-testkit distribution,
never of the product images.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import uuid
from collections.abc import Callable

from dpserve import API_GROUP, API_VERSION
from dpserve.api import privacybudget, privatemodel
from dpserve.ledger.outcomes import BudgetEvent
from dpserve.ledger.store import Conflict, NotFound, Obj, Unavailable


class MemoryStore:
    """:class:`Store` in memory, with the API server's resourceVersion semantics.

    Fault injection for tests (each a count of upcoming status writes it applies to):

    - ``conflicts``: somebody else writes first (the object's resourceVersion moves), so the
      write is refused with Conflict;
    - ``unreachable_writes``: the write never reaches the server (Unavailable, not persisted);
    - ``lost_replies``: the write is persisted but the reply is lost (Unavailable, persisted):
      the ambiguous outcome a lease-id retry must resolve;
    - ``unreachable``: every call fails with Unavailable while set.

    ``after_persist`` runs right after a status write lands (a crash hook for tests).
    """

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], Obj] = {}
        self.events: list[tuple[str, Obj, BudgetEvent]] = []
        self._versions = itertools.count(1)
        self.status_writes = 0
        self.reads = 0
        self.conflicts = 0
        self.unreachable_writes = 0
        self.lost_replies = 0
        self.unreachable = False
        self.after_persist: Callable[[Obj], None] | None = None
        self.latency_s = 0.0

    # -- test setup -------------------------------------------------------------------

    def put(
        self, plural: str, namespace: str, name: str, spec: Obj, status: Obj | None = None
    ) -> Obj:
        """Create or replace an object's spec (generation bumps when the spec changes)."""
        key = (plural, namespace, name)
        old = self.objects.get(key)
        kind = privacybudget.KIND if plural == privacybudget.PLURAL else privatemodel.KIND
        if old is None:
            meta: Obj = {
                "name": name,
                "namespace": namespace,
                "uid": str(uuid.uuid4()),
                "generation": 1,
            }
            obj: Obj = {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": kind, "metadata": meta}
        else:
            obj = old
            if old.get("spec") != spec:
                obj["metadata"]["generation"] += 1
        obj["spec"] = copy.deepcopy(spec)
        if status is not None:
            obj["status"] = copy.deepcopy(status)
        obj["metadata"]["resourceVersion"] = str(next(self._versions))
        self.objects[key] = obj
        return copy.deepcopy(obj)

    def put_budget(self, namespace: str, name: str, spec: Obj, status: Obj | None = None) -> Obj:
        return self.put(privacybudget.PLURAL, namespace, name, spec, status)

    def put_model(self, namespace: str, name: str, spec: Obj, status: Obj | None = None) -> Obj:
        return self.put(privatemodel.PLURAL, namespace, name, spec, status)

    def budget(self, namespace: str, name: str) -> Obj:
        return copy.deepcopy(self.objects[(privacybudget.PLURAL, namespace, name)])

    def put_config_map(self, namespace: str, name: str, data: dict[str, str]) -> None:
        self.objects[("configmaps", namespace, name)] = {
            "metadata": {"name": name, "namespace": namespace}, "data": dict(data)}

    def put_raw(self, plural: str, obj: Obj) -> Obj:
        """Store a built-in object (``pods``, ``replicasets``, ``deployments``) as given,
        with a uid if it has none."""
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        meta.setdefault("uid", str(uuid.uuid4()))
        meta["resourceVersion"] = str(next(self._versions))
        self.objects[(plural, meta["namespace"], meta["name"])] = obj
        return copy.deepcopy(obj)

    def delete_raw(self, plural: str, namespace: str, name: str) -> None:
        self.objects.pop((plural, namespace, name), None)

    # -- Store ------------------------------------------------------------------------

    async def _enter(self) -> None:
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        else:
            await asyncio.sleep(0)  # a real call always yields to the loop
        if self.unreachable:
            raise Unavailable("API server unreachable (injected)")

    async def _get(self, plural: str, namespace: str, name: str) -> Obj:
        await self._enter()
        self.reads += 1
        obj = self.objects.get((plural, namespace, name))
        if obj is None:
            raise NotFound(f"{plural} {namespace}/{name} not found")
        return copy.deepcopy(obj)

    async def get_budget(self, namespace: str, name: str) -> Obj:
        return await self._get(privacybudget.PLURAL, namespace, name)

    async def get_model(self, namespace: str, name: str) -> Obj:
        return await self._get(privatemodel.PLURAL, namespace, name)

    async def get_config_map(self, namespace: str, name: str) -> Obj:
        return await self._get("configmaps", namespace, name)

    async def get_pod(self, namespace: str, name: str) -> Obj:
        return await self._get("pods", namespace, name)

    async def get_workload(self, namespace: str, kind: str, name: str) -> Obj:
        plural = {"ReplicaSet": "replicasets", "Deployment": "deployments"}.get(kind)
        if plural is None:
            raise NotFound(f"{kind} {namespace}/{name}: not a workload the ledger reads")
        return await self._get(plural, namespace, name)

    async def replace_budget_status(self, namespace: str, name: str, body: Obj) -> Obj:
        await self._enter()
        key = (privacybudget.PLURAL, namespace, name)
        obj = self.objects.get(key)
        if obj is None:
            raise NotFound(f"privacybudgets {namespace}/{name} not found")
        if self.unreachable_writes:
            self.unreachable_writes -= 1
            raise Unavailable("status write did not reach the API server (injected)")
        if self.conflicts:
            self.conflicts -= 1
            obj["metadata"]["resourceVersion"] = str(next(self._versions))  # a foreign write
        precondition = body.get("metadata", {}).get("resourceVersion")
        if precondition is not None and precondition != obj["metadata"]["resourceVersion"]:
            raise Conflict(
                f"the object has been modified (resourceVersion {precondition} is stale)"
            )
        obj["status"] = copy.deepcopy(body.get("status"))
        obj["metadata"]["resourceVersion"] = str(next(self._versions))
        self.status_writes += 1
        if self.after_persist is not None:
            self.after_persist(copy.deepcopy(obj))
        if self.lost_replies:
            self.lost_replies -= 1
            raise Unavailable("status write persisted but the reply was lost (injected)")
        return copy.deepcopy(obj)

    async def annotate_budget(self, namespace: str, name: str, annotations: dict[str, str]) -> None:
        await self._enter()
        obj = self.objects.get((privacybudget.PLURAL, namespace, name))
        if obj is None:
            raise NotFound(f"privacybudgets {namespace}/{name} not found")
        obj["metadata"].setdefault("annotations", {}).update(annotations)
        obj["metadata"]["resourceVersion"] = str(next(self._versions))

    async def emit_event(self, namespace: str, involved: Obj, event: BudgetEvent) -> None:
        await self._enter()
        self.events.append((namespace, copy.deepcopy(involved), event))

    async def ping(self) -> None:
        await self._enter()

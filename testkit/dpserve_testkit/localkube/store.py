"""Object semantics of a real API server on top of kmock's object array.

Every committed change gets the next global resourceVersion, a history entry in kmock's
``objects`` (so tests can assert on versions) and a watch event. Stored dicts are never
mutated in place: every write builds a new dict, so readers and watch queues can share them.
All methods are synchronous and run on the emulator's event loop: without an ``await``
inside, each operation is atomic.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import secrets
import string
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import kmock

from dpserve_testkit.localkube import clusterips, crdvalidation, errors, patching
from dpserve_testkit.localkube.kinds import CRD_RESOURCE, NAMESPACES, Kind, KindRegistry

Obj = dict[str, Any]
Key = tuple[str, str, str]  # group, version, plural
WATCH_LOG_SIZE = 50_000
_INITIAL_NAMESPACES = ("default", "kube-system", "kube-public")


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class WatchEvent:
    rv: int
    type: str  # ADDED | MODIFIED | DELETED
    obj: Obj
    old: Obj | None


@dataclass(eq=False)  # identity: each watch request is its own subscriber
class Watcher:
    namespace: str | None
    predicate: Callable[[Mapping[str, Any]], bool]
    queue: asyncio.Queue[WatchEvent] = field(default_factory=asyncio.Queue)

    def translate(self, event: WatchEvent) -> tuple[str, Obj] | None:
        """The event as this watcher sees it: selector transitions become ADDED / DELETED."""
        meta = event.obj.get("metadata", {})
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return None
        now = self.predicate(event.obj)
        if event.type != "MODIFIED" or event.old is None:
            return (event.type, event.obj) if now else None
        before = self.predicate(event.old)
        if now and before:
            return "MODIFIED", event.obj
        if now:
            return "ADDED", event.obj
        if before:
            return "DELETED", event.obj
        return None


def _meta(obj: Mapping[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _content(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Everything but metadata and status: what metadata.generation counts changes of."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "kind", "apiVersion")}


def _get_path(obj: Any, dotted: str) -> Any:
    for part in dotted.strip(".").split("."):
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


def _set_path(obj: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.strip(".").split(".")
    for part in parts[:-1]:
        obj = obj.setdefault(part, {})
    obj[parts[-1]] = value


class Store:
    def __init__(self, objects: kmock.ObjectsArray, kinds: KindRegistry) -> None:
        self._objects = objects
        self.kinds = kinds
        self.rv = 0
        self._index: dict[Key, dict[tuple[str | None, str], Obj]] = {}
        self._log: dict[Key, deque[WatchEvent]] = {}
        self._log_floor: dict[Key, int] = {}  # newest rv evicted from the log
        self._watchers: dict[Key, set[Watcher]] = {}
        self._uids: set[str] = set()
        # Server-side apply: each field manager's last applied configuration per object.
        self._applied: dict[tuple[Key, str | None, str], dict[str, Obj]] = {}
        # Called with the kind of every committed change (the RBAC index's invalidation).
        self.listeners: list[Callable[[Kind], None]] = []
        for name in _INITIAL_NAMESPACES:
            ns_kind = self._kind_of(NAMESPACES)
            self.create(ns_kind, None, {"metadata": {"name": name}})
        # One ordinary node, as a single-node development cluster has (no TEE labels).
        node_kind = self.kinds.get("", "v1", "nodes")
        if node_kind is not None:
            self.create(node_kind, None, {
                "metadata": {"name": "localkube-node", "labels": {
                    "kubernetes.io/hostname": "localkube-node", "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64"}},
                "status": {"conditions": [{"type": "Ready", "status": "True"}]},
            })

    # ----------------------------------------------------------------- reading
    def _kind_of(self, res: kmock.resource) -> Kind:
        kind = self.kinds.get(res.group or "", res.version or "", res.plural or "")
        assert kind is not None
        return kind

    @staticmethod
    def _key(kind: Kind) -> Key:
        return kind.group, kind.version, kind.plural

    def _bucket(self, kind: Kind) -> dict[tuple[str | None, str], Obj]:
        return self._index.setdefault(self._key(kind), {})

    def find(self, kind: Kind, namespace: str | None, name: str) -> Obj | None:
        return self._bucket(kind).get((namespace if kind.namespaced else None, name))

    def get(self, kind: Kind, namespace: str | None, name: str) -> Obj:
        obj = self.find(kind, namespace, name)
        if obj is None:
            raise errors.not_found(kind.plural, kind.group, name)
        return obj

    def query(
        self, kind: Kind, namespace: str | None,
        predicate: Callable[[Mapping[str, Any]], bool] = lambda o: True,
    ) -> list[Obj]:
        return [
            obj for (ns, _), obj in self._bucket(kind).items()
            if (namespace is None or ns == namespace) and predicate(obj)
        ]

    def iter_all(self) -> Iterator[tuple[Kind, Obj]]:
        for key, bucket in list(self._index.items()):
            kind = self.kinds.get(*key)
            if kind is None:
                continue
            for obj in list(bucket.values()):
                yield kind, obj

    # ----------------------------------------------------------------- writing
    def _commit(self, kind: Kind, event_type: str, obj: Obj, old: Obj | None) -> Obj:
        self.rv += 1
        meta = dict(_meta(obj))
        meta["resourceVersion"] = str(self.rv)
        obj = {**obj, "metadata": meta}
        namespace = meta.get("namespace") if kind.namespaced else None
        key = (namespace, meta["name"])
        array_key = (kind.resource, namespace, meta["name"])
        bucket = self._bucket(kind)
        if event_type == "DELETED":
            self._uids.discard(meta.get("uid", ""))
            bucket.pop(key, None)
            if array_key in self._objects:
                self._objects[array_key].delete()
        else:
            self._uids.add(meta.get("uid", ""))
            bucket[key] = obj
            if array_key in self._objects:
                self._objects[array_key].create(obj)
            else:
                self._objects[array_key] = obj
        self._publish(kind, WatchEvent(self.rv, event_type, obj, old))
        return obj

    def _publish(self, kind: Kind, event: WatchEvent) -> None:
        key = self._key(kind)
        log = self._log.setdefault(key, deque())
        if len(log) >= WATCH_LOG_SIZE:
            self._log_floor[key] = log.popleft().rv
        log.append(event)
        for watcher in self._watchers.get(key, ()):
            watcher.queue.put_nowait(event)
        for listener in self.listeners:
            listener(kind)

    def _validate(self, kind: Kind, obj: Obj, name: str, *, status_only: bool = False,
                  strict: bool = False, old: Obj | None = None) -> Obj:
        """Prune, default and validate a write; ``old`` (an update's stored object) is what
        transition rules read as ``oldSelf``."""
        if kind.crd is None:
            return obj
        if strict:
            unknown = crdvalidation.unknown_fields(obj, kind.crd)
            if unknown:
                raise errors.bad_request(
                    "strict decoding error: " + ", ".join(f'unknown field "{f}"' for f in unknown)
                )
        if status_only:
            # A status write is pruned like any other write of the object (a CRD older
            # than its writer drops the fields it does not declare; 200, not 422).
            obj = crdvalidation.prune_unknown_fields(obj, kind.crd)
            errs = crdvalidation.status_errors(obj, kind.crd, old)
            return obj if not errs else self._invalid(kind, name, errs)
        # Without strict field validation the API server silently prunes unknown fields.
        obj = crdvalidation.prune_unknown_fields(obj, kind.crd)
        defaulted, errs = crdvalidation.validate(obj, kind.crd, old)
        if errs:
            self._invalid(kind, name, errs)
        return defaulted

    @staticmethod
    def _invalid(kind: Kind, name: str, errs: list[str]) -> Obj:
        raise errors.invalid(kind.kind, kind.group, name, errs)

    def _check_namespace(self, kind: Kind, namespace: str | None) -> None:
        if not kind.namespaced:
            return
        if namespace is None:
            raise errors.bad_request(f"{kind.kind} is namespaced: a namespace is required")
        ns = self.find(self._kind_of(NAMESPACES), None, namespace)
        if ns is None:
            raise errors.not_found("namespaces", "", namespace)
        if _meta(ns).get("deletionTimestamp"):
            raise errors.forbidden(
                kind.plural, kind.group, namespace,
                f"unable to create new content in namespace {namespace} because it is being "
                "terminated",
            )

    def create(self, kind: Kind, namespace: str | None, body: Any, *, strict: bool = False) -> Obj:
        if not isinstance(body, dict):
            raise errors.bad_request("the request body must be a JSON object")
        obj = copy.deepcopy(body)
        meta = dict(_meta(obj))
        if kind.namespaced:
            body_ns = meta.get("namespace")
            if namespace is not None and body_ns not in (None, namespace):
                raise errors.bad_request(
                    "the namespace of the provided object does not match the namespace sent "
                    "on the request"
                )
            namespace = namespace or body_ns
        self._check_namespace(kind, namespace)
        name = meta.get("name")
        if not name and meta.get("generateName"):
            alphabet = string.ascii_lowercase + string.digits
            name = meta["generateName"] + "".join(secrets.choice(alphabet) for _ in range(5))
        if not name:
            raise errors.invalid(kind.kind, kind.group, "", ["metadata.name: Required value"])
        if self.find(kind, namespace, name) is not None:
            raise errors.already_exists(kind.plural, kind.group, name)
        meta.update(name=name, uid=str(uuid.uuid4()), creationTimestamp=now_rfc3339())
        for dropped in ("deletionTimestamp", "deletionGracePeriodSeconds", "resourceVersion",
                        "managedFields"):
            meta.pop(dropped, None)
        if kind.namespaced:
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        if kind.tracks_generation:
            meta["generation"] = 1
        obj["metadata"] = meta
        obj["apiVersion"] = kind.api_version
        obj["kind"] = kind.kind
        if kind.status_subresource and kind.crd is not None:
            obj.pop("status", None)
        if kind.resource == NAMESPACES:
            obj["status"] = {"phase": "Active"}
        if kind.resource == clusterips.SERVICES:
            clusterips.allocate(obj, self._bucket(kind).values())
        obj = self._validate(kind, obj, name, strict=strict)
        if kind.resource == CRD_RESOURCE:
            self._check_crd(obj)
        stored = self._commit(kind, "ADDED", obj, None)
        if kind.resource == CRD_RESOURCE:
            self.kinds.register_crd(stored)
        refs = meta.get("ownerReferences") or []
        if refs and not any(r.get("uid") in self._uids for r in refs):
            # Owners already gone (a controller raced the deletion): the garbage collector
            # removes a dependent whose owners no longer exist.
            self.delete(kind, namespace, name)
        return stored

    def _check_crd(self, crd: Obj) -> None:
        spec = crd.get("spec") or {}
        names = spec.get("names") or {}
        expected = f"{names.get('plural')}.{spec.get('group')}"
        if _meta(crd).get("name") != expected:
            raise errors.invalid(
                "CustomResourceDefinition", "apiextensions.k8s.io", _meta(crd).get("name", ""),
                [f"metadata.name: Invalid value: must be spec.names.plural+\".\"+spec.group "
                 f"({expected})"],
            )

    def update(
        self, kind: Kind, namespace: str | None, name: str, new: Any, *,
        subresource: str | None = None, require_rv: bool = False, strict: bool = False,
    ) -> Obj:
        """Replace ``name`` with ``new`` (a PUT, or the result of a PATCH)."""
        old = self.get(kind, namespace, name)
        if not isinstance(new, dict):
            raise errors.bad_request("the request body must be a JSON object")
        new_meta = dict(_meta(new))
        old_meta = _meta(old)
        if new_meta.get("name", name) != name:
            raise errors.bad_request(
                f"the name of the object ({new_meta.get('name')}) does not match the name on "
                f"the URL ({name})"
            )
        sent_rv = new_meta.get("resourceVersion")
        if require_rv and not sent_rv:
            raise errors.invalid(
                kind.kind, kind.group, name,
                ["metadata.resourceVersion: Invalid value: 0x0: must be specified for an update"],
            )
        if sent_rv and sent_rv != old_meta.get("resourceVersion"):
            raise errors.conflict(kind.plural, kind.group, name)

        if subresource == "status":
            if not kind.status_subresource:
                raise errors.not_found(kind.plural, kind.group, name)
            obj = {**old, "status": copy.deepcopy(new.get("status"))}
            if obj["status"] is None:
                obj.pop("status")
            obj = self._validate(kind, obj, name, status_only=True, old=old)
        else:
            obj = copy.deepcopy(new)
            for immutable in ("uid", "creationTimestamp", "deletionTimestamp",
                              "deletionGracePeriodSeconds", "generation", "namespace"):
                if immutable in old_meta:
                    new_meta[immutable] = old_meta[immutable]
                else:
                    new_meta.pop(immutable, None)
            new_meta["name"] = name
            if old_meta.get("deletionTimestamp"):
                added = set(new_meta.get("finalizers") or []) - set(
                    old_meta.get("finalizers") or [])
                if added:
                    raise errors.invalid(
                        kind.kind, kind.group, name,
                        [f"metadata.finalizers: Forbidden: no new finalizers can be added if "
                         f"the object is being deleted, found new finalizers {sorted(added)}"],
                    )
            obj["metadata"] = new_meta
            obj["apiVersion"] = kind.api_version
            obj["kind"] = kind.kind
            if kind.resource == clusterips.SERVICES:
                clusterips.keep(obj, old)
            if kind.status_subresource:  # the main resource ignores status writes
                if "status" in old:
                    obj["status"] = old["status"]
                else:
                    obj.pop("status", None)
            # Ratcheting: validation runs when the object's content changed, as the API server
            # re-checks only what an update touches.
            if _content(obj) != _content(old) or kind.crd is None:
                obj = self._validate(kind, obj, name, strict=strict, old=old)
            if kind.tracks_generation and _content(obj) != _content(old):
                obj["metadata"] = {**obj["metadata"],
                                   "generation": int(old_meta.get("generation", 1)) + 1}

        if kind.resource == CRD_RESOURCE:
            self._check_crd(obj)
        if self._same(obj, old):
            return old  # a no-op write changes nothing: no new resourceVersion, no event
        stored = self._commit(kind, "MODIFIED", obj, old)
        if kind.resource == CRD_RESOURCE:
            self.kinds.register_crd(stored)
        if _meta(stored).get("deletionTimestamp") and not _meta(stored).get("finalizers"):
            self._remove(kind, stored)
        return stored

    @staticmethod
    def _same(a: Obj, b: Obj) -> bool:
        strip = ("resourceVersion", "managedFields")
        ma = {k: v for k, v in _meta(a).items() if k not in strip}
        mb = {k: v for k, v in _meta(b).items() if k not in strip}
        return ma == mb and {k: v for k, v in a.items() if k != "metadata"} == {
            k: v for k, v in b.items() if k != "metadata"
        }

    def patch(
        self, kind: Kind, namespace: str | None, name: str, body: Any, content_type: str, *,
        subresource: str | None = None, strict: bool = False,
    ) -> Obj:
        old = self.get(kind, namespace, name)
        try:
            new = patching.apply_patch(old, body, content_type)
        except patching.TestFailed as exc:
            raise errors.ApiError(
                status=422, reason="Invalid", message=f"the patch test failed: {exc}",
                details={"kind": kind.plural, "group": kind.group, "name": name},
            ) from exc
        return self.update(kind, namespace, name, new, subresource=subresource, strict=strict)

    def apply(
        self, kind: Kind, namespace: str | None, name: str, body: Any, *, manager: str,
        subresource: str | None = None, strict: bool = False,
    ) -> tuple[Obj, bool]:
        """Server-side apply (``application/apply-patch+yaml``) by ``manager``: creates the
        object when it is missing (True), otherwise merges as
        :func:`patching.server_side_apply` describes (False)."""
        if not isinstance(body, dict):
            raise errors.bad_request("an apply configuration must be an object")
        meta = _meta(body)
        if meta.get("name") not in (None, name):
            raise errors.bad_request(
                f"the name of the object ({meta.get('name')}) does not match the name on "
                f"the URL ({name})")
        for required in ("apiVersion", "kind"):
            if not body.get(required):
                raise errors.bad_request(f"{required} must be set in an apply configuration")
        key = (self._key(kind), namespace if kind.namespaced else None, name)
        live = self.find(kind, namespace, name)
        applied = copy.deepcopy(body)
        if live is None:
            if subresource is not None:
                raise errors.not_found(kind.plural, kind.group, name)
            created = self.create(kind, namespace,
                                  {**applied, "metadata": {**meta, "name": name}},
                                  strict=strict)
            self._applied[key] = {manager: applied}
            return created, True
        previous = self._applied.get(key, {}).get(manager)
        new = patching.server_side_apply(live, previous, applied)
        new["metadata"] = {**new.get("metadata", {}),
                           "resourceVersion": _meta(live).get("resourceVersion")}
        stored = self.update(kind, namespace, name, new, subresource=subresource,
                             strict=strict)
        self._applied.setdefault(key, {})[manager] = applied
        return stored, False

    def force(self, kind: Kind, obj: Obj) -> Obj:
        """Store ``obj`` as is, skipping validation (what a cluster without the CRD's schema,
        or an older CRD version, would let through). Tests use it to feed the operator an
        object the API would refuse; metadata identity fields are still assigned."""
        meta = dict(_meta(obj))
        namespace = meta.get("namespace") if kind.namespaced else None
        old = self.find(kind, namespace, meta["name"])
        if old is None:
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", now_rfc3339())
            meta["generation"] = 1
        else:
            for key in ("uid", "creationTimestamp"):
                meta[key] = _meta(old)[key]
            meta["generation"] = int(_meta(old).get("generation", 1)) + 1
        new = {**obj, "metadata": meta, "apiVersion": kind.api_version, "kind": kind.kind}
        return self._commit(kind, "ADDED" if old is None else "MODIFIED", new, old)

    # ----------------------------------------------------------------- scale subresource
    def get_scale(self, kind: Kind, namespace: str | None, name: str) -> Obj:
        if not kind.scale:
            raise errors.not_found(kind.plural, kind.group, name)
        obj = self.get(kind, namespace, name)
        meta = _meta(obj)
        status: dict[str, Any] = {"replicas": _get_path(obj, kind.scale["statusReplicasPath"]) or 0}
        if kind.scale.get("labelSelectorPath"):
            selector = _get_path(obj, kind.scale["labelSelectorPath"])
            if selector:
                status["selector"] = selector
        return {
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion",
                                              "creationTimestamp") if k in meta},
            "spec": {"replicas": _get_path(obj, kind.scale["specReplicasPath"]) or 0},
            "status": status,
        }

    def set_scale(self, kind: Kind, namespace: str | None, name: str, scale: Any) -> Obj:
        if not kind.scale:
            raise errors.not_found(kind.plural, kind.group, name)
        replicas = scale.get("spec", {}).get("replicas") if isinstance(scale, dict) else None
        if not isinstance(replicas, int):
            raise errors.bad_request("a Scale needs spec.replicas (an integer)")
        old = self.get(kind, namespace, name)
        sent_rv = _meta(scale).get("resourceVersion")
        if sent_rv and sent_rv != _meta(old).get("resourceVersion"):
            raise errors.conflict(kind.plural, kind.group, name)
        new = copy.deepcopy(old)
        _set_path(new, kind.scale["specReplicasPath"], scale["spec"]["replicas"])
        new["metadata"] = {k: v for k, v in _meta(new).items() if k != "resourceVersion"}
        self.update(kind, namespace, name, new)
        return self.get_scale(kind, namespace, name)

    # ----------------------------------------------------------------- deleting
    def delete(
        self, kind: Kind, namespace: str | None, name: str, options: Any = None
    ) -> Obj:
        obj = self.get(kind, namespace, name)
        options = options if isinstance(options, dict) else {}
        pre = options.get("preconditions") or {}
        meta = _meta(obj)
        if (pre.get("uid") and pre["uid"] != meta.get("uid")) or (
            pre.get("resourceVersion") and pre["resourceVersion"] != meta.get("resourceVersion")
        ):
            raise errors.conflict(kind.plural, kind.group, name)
        policy = options.get("propagationPolicy") or (
            "Orphan" if options.get("orphanDependents") else "Background"
        )
        if policy == "Orphan":
            self._orphan(meta.get("uid", ""))
        if meta.get("finalizers"):
            if meta.get("deletionTimestamp"):
                return obj
            marked = {**obj, "metadata": {**meta, "deletionTimestamp": now_rfc3339(),
                                          "deletionGracePeriodSeconds": 0}}
            return self._commit(kind, "MODIFIED", marked, obj)
        return self._remove(kind, obj)

    def _remove(self, kind: Kind, obj: Obj) -> Obj:
        meta = _meta(obj)
        if kind.resource == NAMESPACES:
            self._empty_namespace(meta["name"])
        gone = self._commit(kind, "DELETED", obj, obj)
        if kind.resource == CRD_RESOURCE:
            for removed in self.kinds.unregister_crd(obj):
                for child in self.query(removed, None):
                    self._commit(removed, "DELETED", child, child)
        self._collect_dependents(meta.get("uid", ""))
        return gone

    def _empty_namespace(self, namespace: str) -> None:
        for kind, obj in self.iter_all():
            if kind.namespaced and _meta(obj).get("namespace") == namespace:
                self._remove(kind, obj)

    def _dependents(self, uid: str) -> list[tuple[Kind, Obj]]:
        return [
            (kind, obj) for kind, obj in self.iter_all()
            if any(ref.get("uid") == uid for ref in _meta(obj).get("ownerReferences") or [])
        ]

    def _orphan(self, uid: str) -> None:
        for kind, obj in self._dependents(uid):
            meta = _meta(obj)
            refs = [r for r in meta.get("ownerReferences") or [] if r.get("uid") != uid]
            new_meta = {k: v for k, v in meta.items() if k != "ownerReferences"}
            if refs:
                new_meta["ownerReferences"] = refs
            self._commit(kind, "MODIFIED", {**obj, "metadata": new_meta}, obj)

    def _live_uids(self) -> set[str]:
        return self._uids

    def _collect_dependents(self, uid: str) -> None:
        """Garbage collection: a dependent goes once none of its owners exists any more."""
        if not uid:
            return
        dependents = self._dependents(uid)
        if not dependents:
            return
        live = self._live_uids()
        for kind, obj in dependents:
            current = self.find(kind, _meta(obj).get("namespace"), _meta(obj)["name"])
            if current is None:
                continue
            refs = _meta(current).get("ownerReferences") or []
            if any(r.get("uid") in live for r in refs if r.get("uid") != uid):
                continue
            self.delete(kind, _meta(current).get("namespace"), _meta(current)["name"])

    def delete_collection(
        self, kind: Kind, namespace: str | None,
        predicate: Callable[[Mapping[str, Any]], bool],
    ) -> list[Obj]:
        return [
            self.delete(kind, _meta(obj).get("namespace"), _meta(obj)["name"])
            for obj in self.query(kind, namespace, predicate)
        ]

    # ----------------------------------------------------------------- watching
    def subscribe(self, kind: Kind, watcher: Watcher) -> None:
        self._watchers.setdefault(self._key(kind), set()).add(watcher)

    def unsubscribe(self, kind: Kind, watcher: Watcher) -> None:
        self._watchers.get(self._key(kind), set()).discard(watcher)

    def events_since(self, kind: Kind, rv: int) -> list[WatchEvent] | None:
        """Logged events newer than ``rv``; None when ``rv`` is older than the log (410 Gone)."""
        key = self._key(kind)
        if rv < self._log_floor.get(key, 0):
            return None
        return [e for e in self._log.get(key, ()) if e.rv > rv]

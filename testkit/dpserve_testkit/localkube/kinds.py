"""What the emulator knows about each resource: built-ins (kmock's bundled discovery) and CRDs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import kmock

CRD_RESOURCE = kmock.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")
NAMESPACES = kmock.resource("", "v1", "namespaces")
TOKENREVIEWS = kmock.resource("authentication.k8s.io", "v1", "tokenreviews")

# Review resources are answered, never stored (they are not writes to any state).
_REVIEWS = {
    ("authentication.k8s.io", "tokenreviews"),
    ("authorization.k8s.io", "subjectaccessreviews"),
    ("authorization.k8s.io", "selfsubjectaccessreviews"),
    ("authorization.k8s.io", "localsubjectaccessreviews"),
    ("authorization.k8s.io", "selfsubjectrulesreviews"),
}
_ALL_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
_BUILTIN_SCALE = {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"}


@dataclass
class Kind:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    singular: str = ""
    short_names: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    status_subresource: bool = False
    scale: dict[str, str] | None = None
    crd: dict[str, Any] | None = None
    columns: list[dict[str, Any]] = field(default_factory=list)

    @property
    def resource(self) -> kmock.resource:
        return kmock.resource(self.group, self.version, self.plural)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def is_review(self) -> bool:
        return (self.group, self.plural) in _REVIEWS

    @property
    def tracks_generation(self) -> bool:
        """metadata.generation counts spec changes for CRs and for kinds with a status."""
        return self.crd is not None or self.status_subresource


class KindRegistry:
    """Resources by (group, version, plural), also published to kmock's discovery."""

    def __init__(self, emulator: kmock.KubernetesEmulator) -> None:
        self._emulator = emulator
        self._kinds: dict[tuple[str, str, str], Kind] = {}
        emulator.resources.load_bundled()
        for key in list(emulator.resources):
            res = kmock.resource(key)
            info = emulator.resources[res]
            if res.group is None or res.version is None or res.plural is None:
                continue
            subs = set(info.subresources)
            self._kinds[(res.group, res.version, res.plural)] = Kind(
                group=res.group,
                version=res.version,
                plural=res.plural,
                kind=info.kind or res.plural.capitalize(),
                namespaced=bool(info.namespaced),
                singular=info.singular or "",
                short_names=sorted(info.shortnames),
                categories=sorted(info.categories),
                status_subresource="status" in subs,
                scale=dict(_BUILTIN_SCALE) if "scale" in subs else None,
            )

    def get(self, group: str, version: str, plural: str) -> Kind | None:
        return self._kinds.get((group, version, plural))

    def has_plural(self, group: str, version: str, plural: str) -> bool:
        return (group, version, plural) in self._kinds

    def by_kind(self, api_version: str, kind: str) -> Kind | None:
        group, _, version = api_version.rpartition("/")
        for k in self._kinds.values():
            if k.group == group and k.version == version and k.kind == kind:
                return k
        return None

    def all(self) -> list[Kind]:
        return list(self._kinds.values())

    def register_crd(self, crd: dict[str, Any]) -> list[Kind]:
        spec = crd["spec"]
        names = spec["names"]
        added = []
        for version in spec["versions"]:
            if not version.get("served", True):
                continue
            subs = version.get("subresources") or {}
            kind = Kind(
                group=spec["group"],
                version=version["name"],
                plural=names["plural"],
                kind=names["kind"],
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                singular=names.get("singular", names["kind"].lower()),
                short_names=list(names.get("shortNames", [])),
                categories=list(names.get("categories", [])),
                status_subresource="status" in subs,
                scale=subs.get("scale"),
                crd=crd,
                columns=list(version.get("additionalPrinterColumns", [])),
            )
            self._kinds[(kind.group, kind.version, kind.plural)] = kind
            self._publish(kind)
            added.append(kind)
        return added

    def unregister_crd(self, crd: dict[str, Any]) -> list[Kind]:
        spec = crd["spec"]
        removed = []
        for version in spec["versions"]:
            key = (spec["group"], version["name"], spec["names"]["plural"])
            kind = self._kinds.pop(key, None)
            if kind is not None:
                removed.append(kind)
                if kind.resource in self._emulator.resources:
                    del self._emulator.resources[kind.resource]
        return removed

    def _publish(self, kind: Kind) -> None:
        subresources = set()
        if kind.status_subresource:
            subresources.add("status")
        if kind.scale:
            subresources.add("scale")
        self._emulator.resources[kind.resource] = kmock.ResourceInfo(
            kind=kind.kind,
            singular=kind.singular,
            namespaced=kind.namespaced,
            verbs=set(_ALL_VERBS),
            shortnames=set(kind.short_names),
            categories=set(kind.categories),
            subresources=subresources,
        )

"""RBAC as kube-apiserver's RBAC authorizer evaluates it, over the stored (Cluster)Roles.

A request is allowed when some rule reaches it: a ClusterRoleBinding's role everywhere, a
RoleBinding's role (a Role of its namespace or a ClusterRole) in the binding's namespace
only. A rule matches on API group, resource (``plural``, ``plural/subresource`` or
``*/subresource``), verb and, when it lists any, the object's name; ``*`` matches anything.
Members of ``system:masters`` are allowed everything, as on a real API server.

Not emulated: ClusterRole aggregation (``aggregationRule``), non-resource URLs (discovery is
open to every authenticated user, as the default ``system:discovery`` binding makes it), and
escalation checks on writes of RBAC objects.

The bindings are compiled into an index by subject (user name, group name) once per change
of an RBAC object: a request costs a few dictionary lookups and the rules of the subjects
it names, not a scan of every binding.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

RBAC_GROUP = "rbac.authorization.k8s.io"
SUPERUSER_GROUP = "system:masters"
AUTHENTICATED = "system:authenticated"
UNAUTHENTICATED = "system:unauthenticated"
ANONYMOUS = "system:anonymous"
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"
SERVICE_ACCOUNTS_GROUP = "system:serviceaccounts"

Obj = Mapping[str, Any]


@dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...] = ()

    @classmethod
    def service_account(cls, namespace: str, name: str) -> User:
        """A ServiceAccount's user, with the groups its tokens authenticate with."""
        return cls(f"{SERVICE_ACCOUNT_PREFIX}{namespace}:{name}",
                   (SERVICE_ACCOUNTS_GROUP, f"{SERVICE_ACCOUNTS_GROUP}:{namespace}",
                    AUTHENTICATED))


@dataclass(frozen=True)
class Attributes:
    """What a resource request asks: the verb on which object(s)."""

    verb: str
    group: str
    resource: str
    subresource: str = ""
    namespace: str | None = None
    name: str | None = None

    @property
    def combined_resource(self) -> str:
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


@dataclass(frozen=True)
class Rule:
    """One PolicyRule (resource rules only)."""

    groups: frozenset[str]
    resources: frozenset[str]
    verbs: frozenset[str]
    names: frozenset[str]

    @classmethod
    def parse(cls, raw: Obj) -> Rule:
        def field(key: str) -> frozenset[str]:
            return frozenset(str(v) for v in raw.get(key) or [])

        return cls(field("apiGroups"), field("resources"), field("verbs"),
                   field("resourceNames"))

    def matches(self, attrs: Attributes) -> bool:
        if "*" not in self.verbs and attrs.verb not in self.verbs:
            return False
        if "*" not in self.groups and attrs.group not in self.groups:
            return False
        if not self._resource_matches(attrs):
            return False
        # resourceNames restrict to named objects: a list, watch or create of "any" fails.
        return not self.names or (attrs.name is not None and attrs.name in self.names)

    def _resource_matches(self, attrs: Attributes) -> bool:
        if "*" in self.resources or attrs.combined_resource in self.resources:
            return True
        return bool(attrs.subresource) and f"*/{attrs.subresource}" in self.resources


@dataclass(frozen=True)
class Grant:
    """Rules bound to a subject: everywhere (``namespace`` None) or in one namespace."""

    namespace: str | None
    rules: tuple[Rule, ...]

    def allows(self, attrs: Attributes) -> bool:
        if self.namespace is not None and attrs.namespace != self.namespace:
            return False
        return any(rule.matches(attrs) for rule in self.rules)


def _subject_keys(subject: Obj, binding_namespace: str | None) -> str | None:
    kind, name = subject.get("kind"), subject.get("name")
    if not isinstance(name, str) or not name:
        return None
    if kind == "User":
        return "user:" + name
    if kind == "Group":
        return "group:" + name
    if kind == "ServiceAccount":
        namespace = subject.get("namespace") or binding_namespace
        return f"user:{SERVICE_ACCOUNT_PREFIX}{namespace}:{name}" if namespace else None
    return None


class RbacIndex:
    """Compiled bindings: subject key -> the grants it holds."""

    def __init__(self, grants: Mapping[str, tuple[Grant, ...]]) -> None:
        self._grants = dict(grants)

    @classmethod
    def build(cls, roles: Iterable[Obj], cluster_roles: Iterable[Obj],
              role_bindings: Iterable[Obj], cluster_role_bindings: Iterable[Obj]) -> RbacIndex:
        def parsed(role: Obj) -> tuple[Rule, ...]:
            return tuple(Rule.parse(r) for r in role.get("rules") or [])

        cluster = {str(r["metadata"]["name"]): parsed(r) for r in cluster_roles}
        local = {(str(r["metadata"].get("namespace")), str(r["metadata"]["name"])): parsed(r)
                 for r in roles}
        grants: dict[str, list[Grant]] = {}

        def bind(binding: Obj, namespace: str | None, rules: tuple[Rule, ...] | None) -> None:
            if not rules:
                return  # a binding to a missing role grants nothing (until the role exists)
            for subject in binding.get("subjects") or []:
                key = _subject_keys(subject, namespace)
                if key is not None:
                    grants.setdefault(key, []).append(Grant(namespace, rules))

        for binding in cluster_role_bindings:
            ref = binding.get("roleRef") or {}
            if ref.get("kind") == "ClusterRole":
                bind(binding, None, cluster.get(str(ref.get("name"))))
        for binding in role_bindings:
            namespace = str(binding["metadata"].get("namespace"))
            ref = binding.get("roleRef") or {}
            name = str(ref.get("name"))
            rules = (cluster.get(name) if ref.get("kind") == "ClusterRole"
                     else local.get((namespace, name)) if ref.get("kind") == "Role" else None)
            bind(binding, namespace, rules)
        return cls({key: tuple(value) for key, value in grants.items()})

    def allows(self, user: User, attrs: Attributes) -> bool:
        if SUPERUSER_GROUP in user.groups:
            return True
        keys = ["user:" + user.name, *("group:" + g for g in user.groups)]
        return any(grant.allows(attrs) for key in keys for grant in self._grants.get(key, ()))


def qualified_resource(group: str, resource: str) -> str:
    """``<plural>.<group>`` as the API server names a resource in messages (core: plural)."""
    return f"{resource}.{group}" if group else resource


def forbidden_message(user: User, attrs: Attributes) -> str:
    """kube-apiserver's message for a request RBAC denied."""
    subject = qualified_resource(attrs.group, attrs.resource)
    if attrs.name:
        subject += f' "{attrs.name}"'
    where = (f'in the namespace "{attrs.namespace}"' if attrs.namespace
             else "at the cluster scope")
    return (f'{subject} is forbidden: User "{user.name}" cannot {attrs.verb} resource '
            f'"{attrs.combined_resource}" in API group "{attrs.group}" {where}')


def forbidden_details(attrs: Attributes) -> dict[str, Any]:
    """The ``details`` of that 403's ``Status`` (the name only when the request had one)."""
    details: dict[str, Any] = {"kind": attrs.resource, "group": attrs.group}
    if attrs.name:
        details["name"] = attrs.name
    return details

"""Least-privilege RBAC, derived from the operator's one table of what it reads, watches and
writes (dpserve.resources.access), in the right scope, no wildcard, each rule justified.

Two kinds of checks: the chart carries exactly the table (generated rules in sync, placed in
the right Role per mode), and the table covers what the code really does (every Kopf watch
and every resource the controllers call is granted, evaluated by LocalKube's RBAC
authoriser over the rendered chart as the chart's ServiceAccount)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import helm_python as helm
import kopf
import pytest

import dpserve.controllers.owned
import dpserve.controllers.privacybudget
import dpserve.controllers.privatemodel  # noqa: F401  (registers the Kopf handlers read here)
from dpserve.controllers import kubeapi
from dpserve.resources import rbacrules
from dpserve.resources.access import (
    ACCESS,
    OWNED_KINDS,
    Access,
    grants,
    operator_namespace_grants,
)
from dpserve_testkit.localkube import rbac

Objects = list[dict[str, Any]]
Render = Callable[[dict[str, Any]], Objects]
Permissions = dict[tuple[str, str], set[str]]
RULES_FILE = Path(__file__).resolve().parents[2] / rbacrules.DEFAULT_OUTPUT


def _permissions(role: dict[str, Any]) -> Permissions:
    out: Permissions = {}
    for rule in role["rules"]:
        assert set(rule) <= {"apiGroups", "resources", "verbs"}, rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def _expected(accesses: Iterable[Access]) -> Permissions:
    out: Permissions = {}
    for access in accesses:
        out.setdefault((access.res.group, access.resource), set()).update(access.verbs)
    return out


def _roles(objects: Objects, kind: str) -> Objects:
    return [o for o in objects if o["kind"] == kind]


def test_generated_rules_are_in_sync_with_the_table() -> None:
    assert RULES_FILE.read_text(encoding="utf-8") == rbacrules.render_template(), (
        f"{rbacrules.DEFAULT_OUTPUT} is out of date: run "
        f"`python -m dpserve.resources.rbacrules --output {rbacrules.DEFAULT_OUTPUT}`"
    )


def test_generator_writes_the_file(tmp_path: Path) -> None:
    target = tmp_path / "rules.tpl"
    assert rbacrules.main(["--output", str(target)]) == 0
    assert target.read_text(encoding="utf-8") == RULES_FILE.read_text(encoding="utf-8")


def test_no_wildcards_anywhere(scenario_objects: Objects) -> None:
    for role in _roles(scenario_objects, "ClusterRole") + _roles(scenario_objects, "Role"):
        for rule in role["rules"]:
            for key in ("apiGroups", "resources", "verbs"):
                assert all("*" not in item for item in rule[key]), (role["kind"], rule)


@pytest.mark.parametrize("standby", [False, True])
def test_cluster_wide_is_one_cluster_role(render: Render, standby: bool) -> None:
    objects = render({"standby": {"enabled": standby}})
    (role,) = _roles(objects, "ClusterRole")
    cluster, namespaced = grants(cluster_wide=True, standby=standby)
    assert not namespaced
    assert _permissions(role) == _expected(cluster)
    assert not _roles(objects, "Role") and not _roles(objects, "RoleBinding")
    assert len(_roles(objects, "ClusterRoleBinding")) == 1


@pytest.mark.parametrize("standby", [False, True])
def test_namespaced_is_a_role_per_namespace(render: Render, standby: bool) -> None:
    namespaces = ["team-a", "team-b"]
    objects = render({"watchNamespaces": namespaces, "standby": {"enabled": standby}})
    cluster, namespaced = grants(cluster_wide=False, standby=standby)
    (cluster_role,) = _roles(objects, "ClusterRole")
    # Only cluster-scoped resources (plus namespaces, which Kopf resolves in this mode).
    assert _permissions(cluster_role) == _expected(cluster)
    assert all(not a.res.namespaced for a in cluster)
    (own,) = [r for r in _roles(objects, "Role") if r["metadata"]["name"].endswith("-operator")]
    # The operator's own namespace: the ledger Service's ClusterIP, pinned in serving pods.
    assert own["metadata"]["namespace"] == "dpserve-system"  # the release namespace
    assert _permissions(own) == _expected(operator_namespace_grants(cluster_wide=False))
    assert _permissions(own) == {("", "services"): {"get"}}
    roles = {r["metadata"]["namespace"]: r for r in _roles(objects, "Role") if r is not own}
    assert sorted(roles) == namespaces
    for role in roles.values():
        assert _permissions(role) == _expected(namespaced)
    bindings = {b["metadata"]["namespace"]: b for b in _roles(objects, "RoleBinding")
                if not b["metadata"]["name"].endswith("-operator")}
    assert sorted(bindings) == namespaces
    for namespace, binding in bindings.items():
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                      "name": roles[namespace]["metadata"]["name"]}


def test_owned_kinds_get_full_ownership_and_the_table_has_no_duplicates() -> None:
    keys = [(a.res.group, a.resource, a.when) for a in ACCESS]
    assert len(keys) == len(set(keys))
    for owned in OWNED_KINDS:
        (access,) = [a for a in ACCESS if a.res == owned.res and a.subresource is None
                     and a.when == "always"]
        assert {"get", "list", "watch", "create", "update", "delete"} <= set(access.verbs)


def test_rbac_can_be_left_to_the_platform(render: Render) -> None:
    kinds = {o["kind"] for o in render({"rbac": {"create": False}})}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}


def test_every_rule_group_is_justified_by_a_comment(chart_dir: Path) -> None:
    values = {"watchNamespaces": ["team-a"], "standby": {"enabled": True}}
    for extra in ({}, values):
        with helm.Chart.load(chart_dir) as chart:
            text = chart.render(extra, name="dps", namespace="ns")["dpserve/templates/rbac.yaml"]
        lines = [line.strip() for line in text.splitlines()]
        rule_lines = ("- apiGroups:", "resources:", "verbs:")
        for index, line in enumerate(lines):
            if not line.startswith("- apiGroups:"):
                continue
            previous = index - 1
            while lines[previous].startswith(rule_lines):
                previous -= 1
            assert lines[previous].startswith("#"), f"rule without a justification: {line}"


# --- the table covers what the code does, evaluated as the API server would -------------


def _index(objects: Objects) -> rbac.RbacIndex:
    return rbac.RbacIndex.build(_roles(objects, "Role"), _roles(objects, "ClusterRole"),
                                _roles(objects, "RoleBinding"),
                                _roles(objects, "ClusterRoleBinding"))


def _operator(objects: Objects) -> rbac.User:
    (sa,) = _roles(objects, "ServiceAccount")
    return rbac.User.service_account(sa["metadata"]["namespace"], sa["metadata"]["name"])


def _kopf_resources() -> set[tuple[str, str, str]]:
    """(group, version, plural) of every resource a Kopf handler of the operator watches."""
    registry = kopf.get_default_registry()
    out = set()
    for handlers in (registry._watching, registry._changing, registry._indexing,
                     registry._spawning):
        for handler in handlers.get_all_handlers():
            selector = handler.selector
            assert selector is not None and selector.group is not None, handler
            out.add((selector.group, str(selector.version), str(selector.any_name)))
    return out


def test_the_kopf_registry_is_what_the_operator_registers() -> None:
    watched = {plural for _, _, plural in _kopf_resources()}
    assert {"pods", "nodes", "runtimeclasses", "privatemodels", "privacybudgets"} <= watched
    assert {o.res.plural for o in OWNED_KINDS} <= watched


@pytest.mark.parametrize("verb", ["list", "watch"])
def test_every_kopf_watch_is_granted(scenario_values: dict[str, Any], scenario_objects: Objects,
                                     verb: str) -> None:
    """Kopf lists then watches each resource a handler names: without both, the watch gets
    a 403 on a real API server and the handler never fires (crash loops, placement)."""
    index, user = _index(scenario_objects), _operator(scenario_objects)
    namespaces: list[str | None] = list(scenario_values.get("watchNamespaces") or [None])
    for group, _version, plural in sorted(_kopf_resources()):
        namespaced = plural not in ("nodes", "runtimeclasses")
        for namespace in namespaces if namespaced else [None]:
            attributes = rbac.Attributes(verb, group, plural, namespace=namespace)
            assert index.allows(user, attributes), rbac.forbidden_message(user, attributes)


def test_every_resource_the_controllers_call_is_granted(scenario_objects: Objects) -> None:
    index, user = _index(scenario_objects), _operator(scenario_objects)
    namespaced = [o["metadata"]["namespace"] for o in _roles(scenario_objects, "Role")
                  if not o["metadata"]["name"].endswith("-operator")]
    called = [v for v in vars(kubeapi).values() if isinstance(v, kubeapi.Res)]
    called += list(kubeapi.BY_KIND.values())
    assert kubeapi.PODS in called and kubeapi.NODES in called
    for res in called:
        namespace = (namespaced[0] if namespaced else "any") if res.namespaced else None
        for verb in ("get", "list"):
            if res == kubeapi.EVENTS:
                verb = "create"
            attributes = rbac.Attributes(verb, res.group, res.plural, namespace=namespace)
            assert index.allows(user, attributes), rbac.forbidden_message(user, attributes)


def test_nothing_is_granted_that_the_table_does_not_list(scenario_objects: Objects) -> None:
    index, user = _index(scenario_objects), _operator(scenario_objects)
    for verb, group, plural in (("delete", "dpserve.io", "privacybudgets"),
                                ("get", "", "secrets"), ("delete", "", "pods"),
                                ("create", "rbac.authorization.k8s.io", "rolebindings"),
                                ("update", "dpserve.io", "privatemodels")):
        assert not index.allows(user, rbac.Attributes(verb, group, plural, namespace="team-a"))

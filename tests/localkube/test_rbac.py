"""LocalKube's RBAC: the evaluator (table tests) and the emulator answering 401/403 over HTTP
as kube-apiserver does, SubjectAccessReviews included."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dpserve_testkit.localkube import LocalKubeServer, serve
from dpserve_testkit.localkube.client import ApiFailure, Client
from dpserve_testkit.localkube.harness import service_account_kubeconfig
from dpserve_testkit.localkube.rbac import Attributes, RbacIndex, Rule, User

RBAC = "/apis/rbac.authorization.k8s.io/v1"
SA = User.service_account("ops", "op")


def _rule(groups: list[str], resources: list[str], verbs: list[str],
          names: list[str] | None = None) -> Rule:
    raw: dict[str, Any] = {"apiGroups": groups, "resources": resources, "verbs": verbs}
    if names is not None:
        raw["resourceNames"] = names
    return Rule.parse(raw)


@pytest.mark.parametrize(("rule", "attributes", "allowed"), [
    (_rule([""], ["pods"], ["get", "list"]), Attributes("list", "", "pods"), True),
    (_rule([""], ["pods"], ["get", "list"]), Attributes("watch", "", "pods"), False),
    (_rule([""], ["pods"], ["*"]), Attributes("deletecollection", "", "pods"), True),
    (_rule(["apps"], ["pods"], ["get"]), Attributes("get", "", "pods"), False),
    (_rule(["*"], ["pods"], ["get"]), Attributes("get", "apps", "pods"), True),
    # A subresource is its own resource: the parent's grant does not reach it, nor back.
    (_rule(["dpserve.io"], ["privatemodels"], ["patch"]),
     Attributes("patch", "dpserve.io", "privatemodels", "status"), False),
    (_rule(["dpserve.io"], ["privatemodels/status"], ["patch"]),
     Attributes("patch", "dpserve.io", "privatemodels", "status"), True),
    (_rule(["dpserve.io"], ["privatemodels/status"], ["patch"]),
     Attributes("patch", "dpserve.io", "privatemodels"), False),
    (_rule(["apps"], ["*/scale"], ["update"]),
     Attributes("update", "apps", "deployments", "scale"), True),
    (_rule(["apps"], ["*/scale"], ["update"]), Attributes("update", "apps", "deployments"),
     False),
    (_rule([""], ["*"], ["get"]), Attributes("get", "", "pods", "log"), True),
    # resourceNames: only the named objects; a list (no name) is not covered.
    (_rule([""], ["configmaps"], ["get"], ["a"]),
     Attributes("get", "", "configmaps", namespace="n", name="a"), True),
    (_rule([""], ["configmaps"], ["get"], ["a"]),
     Attributes("get", "", "configmaps", namespace="n", name="b"), False),
    (_rule([""], ["configmaps"], ["list"], ["a"]),
     Attributes("list", "", "configmaps", namespace="n"), False),
])
def test_rule_matching(rule: Rule, attributes: Attributes, allowed: bool) -> None:
    assert rule.matches(attributes) is allowed


def _binding(kind: str, name: str, role_kind: str, role: str, subjects: list[dict[str, str]],
             namespace: str | None = None) -> dict[str, Any]:
    meta = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {"kind": kind, "metadata": meta, "subjects": subjects,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind,
                        "name": role}}


POD_READER = {"metadata": {"name": "pod-reader"},
              "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]}
LOCAL_READER = {"metadata": {"name": "cm-reader", "namespace": "team"},
                "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]}
SA_SUBJECT = {"kind": "ServiceAccount", "name": "op", "namespace": "ops"}


@pytest.mark.parametrize(("bindings", "user", "attributes", "allowed"), [
    # ClusterRoleBinding: every namespace and the cluster scope.
    ([_binding("ClusterRoleBinding", "b", "ClusterRole", "pod-reader", [SA_SUBJECT])],
     SA, Attributes("list", "", "pods"), True),
    ([_binding("ClusterRoleBinding", "b", "ClusterRole", "pod-reader", [SA_SUBJECT])],
     SA, Attributes("get", "", "pods", namespace="x", name="p"), True),
    # RoleBinding to a ClusterRole: only in the binding's namespace.
    ([_binding("RoleBinding", "b", "ClusterRole", "pod-reader", [SA_SUBJECT], "team")],
     SA, Attributes("list", "", "pods", namespace="team"), True),
    ([_binding("RoleBinding", "b", "ClusterRole", "pod-reader", [SA_SUBJECT], "team")],
     SA, Attributes("list", "", "pods", namespace="other"), False),
    ([_binding("RoleBinding", "b", "ClusterRole", "pod-reader", [SA_SUBJECT], "team")],
     SA, Attributes("list", "", "pods"), False),
    # RoleBinding to a Role of its namespace.
    ([_binding("RoleBinding", "b", "Role", "cm-reader", [SA_SUBJECT], "team")],
     SA, Attributes("get", "", "configmaps", namespace="team", name="c"), True),
    # A ServiceAccount subject without a namespace is in the RoleBinding's namespace.
    ([_binding("RoleBinding", "b", "Role", "cm-reader", [{"kind": "ServiceAccount",
                                                          "name": "op"}], "team")],
     User.service_account("team", "op"),
     Attributes("get", "", "configmaps", namespace="team", name="c"), True),
    # Groups: every ServiceAccount, the ServiceAccounts of one namespace, authenticated users.
    ([_binding("ClusterRoleBinding", "b", "ClusterRole", "pod-reader",
               [{"kind": "Group", "name": "system:serviceaccounts:ops"}])],
     SA, Attributes("list", "", "pods"), True),
    ([_binding("ClusterRoleBinding", "b", "ClusterRole", "pod-reader",
               [{"kind": "Group", "name": "system:serviceaccounts:other"}])],
     SA, Attributes("list", "", "pods"), False),
    ([_binding("ClusterRoleBinding", "b", "ClusterRole", "pod-reader",
               [{"kind": "User", "name": "alice"}])],
     User("alice", ("system:authenticated",)), Attributes("list", "", "pods"), True),
    ([_binding("ClusterRoleBinding", "b", "ClusterRole", "pod-reader",
               [{"kind": "User", "name": "alice"}])],
     SA, Attributes("list", "", "pods"), False),
    # A binding to a missing role grants nothing; system:masters needs no binding.
    ([_binding("ClusterRoleBinding", "b", "ClusterRole", "missing", [SA_SUBJECT])],
     SA, Attributes("list", "", "pods"), False),
    ([], User("admin", ("system:masters",)), Attributes("delete", "", "nodes", name="n"), True),
])
def test_bindings(bindings: list[dict[str, Any]], user: User, attributes: Attributes,
                  allowed: bool) -> None:
    index = RbacIndex.build(
        [LOCAL_READER], [POD_READER],
        [b for b in bindings if b["kind"] == "RoleBinding"],
        [b for b in bindings if b["kind"] == "ClusterRoleBinding"])
    assert index.allows(user, attributes) is allowed


# --- over HTTP -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKubeServer]:
    srv = serve(kubeconfig=tmp_path_factory.mktemp("kube") / "kubeconfig", rbac=True)
    try:
        admin = Client(srv.url)
        admin.create("/api/v1/namespaces", {"metadata": {"name": "ops"}})
        admin.create("/api/v1/namespaces", {"metadata": {"name": "team"}})
        yield srv
    finally:
        srv.stop()


def _token(server: LocalKubeServer, tmp_path: Path, namespace: str = "ops",
           name: str = "op") -> str:
    import yaml

    config = yaml.safe_load(service_account_kubeconfig(
        server, tmp_path / "kc", namespace=namespace, service_account=name).read_text())
    token: str = config["users"][0]["user"]["token"]
    return token


def test_forbidden_is_kube_apiservers_status(server: LocalKubeServer, tmp_path: Path) -> None:
    sa = Client(server.url, token=_token(server, tmp_path))
    with pytest.raises(ApiFailure) as denied:
        sa.get("/api/v1/pods?watch=true")
    assert denied.value.status == 403
    assert denied.value.body == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": 'pods is forbidden: User "system:serviceaccount:ops:op" cannot watch '
                   'resource "pods" in API group "" at the cluster scope',
        "reason": "Forbidden", "details": {"kind": "pods", "group": ""}, "code": 403,
    }
    with pytest.raises(ApiFailure) as named:
        sa.merge("/apis/dpserve.io/v1alpha1/namespaces/team/privatemodels/m/status", {})
    assert named.value.body["message"] == (
        'privatemodels.dpserve.io "m" is forbidden: User "system:serviceaccount:ops:op" '
        'cannot patch resource "privatemodels/status" in API group "dpserve.io" in the '
        'namespace "team"')


def test_grants_apply_at_once_and_are_withdrawn_at_once(server: LocalKubeServer,
                                                       tmp_path: Path) -> None:
    admin = Client(server.url)
    sa = Client(server.url, token=_token(server, tmp_path, name="reader"))
    path = "/api/v1/namespaces/team/configmaps"
    with pytest.raises(ApiFailure):
        sa.get(path)
    admin.create(f"{RBAC}/namespaces/team/roles", {
        "metadata": {"name": "cm"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]}]})
    admin.create(f"{RBAC}/namespaces/team/rolebindings", _binding(
        "RoleBinding", "cm", "Role", "cm", [{"kind": "ServiceAccount", "name": "reader",
                                             "namespace": "ops"}], "team"))
    assert sa.get(path)["items"] == []
    with pytest.raises(ApiFailure) as other:
        sa.get("/api/v1/namespaces/ops/configmaps")
    assert other.value.status == 403
    admin.delete(f"{RBAC}/namespaces/team/roles/cm")
    with pytest.raises(ApiFailure) as withdrawn:
        sa.get(path)
    assert withdrawn.value.status == 403


def _raw(url: str, authorization: str | None) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": authorization} if authorization else {}
    request = urllib.request.Request(url + "/api/v1/namespaces/team/configmaps", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_unknown_tokens_are_401_and_no_token_is_anonymous(server: LocalKubeServer) -> None:
    code, body = _raw(server.url, "Bearer not-a-token")
    assert (code, body["reason"]) == (401, "Unauthorized")
    code, body = _raw(server.url, None)
    assert (code, body["reason"]) == (403, "Forbidden")
    assert 'User "system:anonymous"' in body["message"]


def test_a_projected_token_for_another_audience_does_not_open_the_api(
        server: LocalKubeServer) -> None:
    server.call(lambda kube: kube.tokens.register(
        "ledger-only", namespace="ops", service_account="op", audiences=("dpserve-ledger",)))
    code, _ = _raw(server.url, "Bearer ledger-only")
    assert code == 401
    # ... while TokenReview (what the ledger asks) still accepts it for its audience.
    review = Client(server.url).create(
        "/apis/authentication.k8s.io/v1/tokenreviews",
        {"spec": {"token": "ledger-only", "audiences": ["dpserve-ledger"]}})
    assert review["status"]["authenticated"] is True


def test_subject_access_review_evaluates_rbac(server: LocalKubeServer) -> None:
    admin = Client(server.url)
    admin.create(f"{RBAC}/clusterroles", {"metadata": {"name": "node-reader"}, "rules": [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]}]})
    admin.create(f"{RBAC}/clusterrolebindings", _binding(
        "ClusterRoleBinding", "node-reader", "ClusterRole", "node-reader",
        [{"kind": "User", "name": "bob"}]))

    def review(verb: str) -> dict[str, Any]:
        answer = admin.create("/apis/authorization.k8s.io/v1/subjectaccessreviews", {
            "spec": {"user": "bob", "groups": ["system:authenticated"],
                     "resourceAttributes": {"verb": verb, "resource": "nodes"}}})
        status: dict[str, Any] = answer["status"]
        return status

    assert review("list") == {"allowed": True}
    denied = review("delete")
    assert denied["allowed"] is False and "cannot delete resource" in denied["reason"]


def test_anonymous_admin_serves_kubectl_but_never_upgrades_a_token(
        server: LocalKubeServer, tmp_path: Path) -> None:
    token = _token(server, tmp_path, name="nobody")
    server.call(lambda kube: kube.enable_rbac(anonymous_admin=True))
    try:
        code, body = _raw(server.url, None)
        assert code == 200 and body["kind"] == "ConfigMapList"
        code, body = _raw(server.url, f"Bearer {token}")
        assert code == 403 and "system:serviceaccount:ops:nobody" in body["message"]
    finally:
        server.call(lambda kube: kube.enable_rbac())

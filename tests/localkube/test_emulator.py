"""LocalKube's server semantics over HTTP on loopback: what the operator relies on."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dpserve_testkit.localkube import LocalKubeServer, serve
from dpserve_testkit.localkube.client import ApiFailure, Client
from dpserve_testkit.localkube.waiting import wait_until

PB = "/apis/dpserve.io/v1alpha1/namespaces/{ns}/privacybudgets"
PM = "/apis/dpserve.io/v1alpha1/namespaces/{ns}/privatemodels"
CM = "/api/v1/namespaces/{ns}/configmaps"
DEPLOY = "/apis/apps/v1/namespaces/{ns}/deployments"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKubeServer]:
    srv = serve(kubeconfig=tmp_path_factory.mktemp("kube") / "kubeconfig")
    yield srv
    srv.stop()


@pytest.fixture
def api(server: LocalKubeServer) -> Client:
    return Client(server.url)


_counter = iter(range(10_000))


@pytest.fixture
def ns(api: Client) -> str:
    name = f"t{next(_counter)}"
    api.create("/api/v1/namespaces", {"metadata": {"name": name}})
    return name


def budget(name: str, epsilon: str = "4", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "dpserve.io/v1alpha1", "kind": "PrivacyBudget",
            "metadata": {"name": name}, "spec": {"epsilon": epsilon, "delta": "1e-6", **spec}}


def model(name: str, budget_name: str = "b") -> dict[str, Any]:
    return {"apiVersion": "dpserve.io/v1alpha1", "kind": "PrivateModel",
            "metadata": {"name": name},
            "spec": {"budgetRef": {"name": budget_name},
                     "model": {"artifact": "pvc://models/m/v1", "format": "state-dict",
                               "training": {"noiseMultiplier": "1.1", "sampleRate": "0.01",
                                            "steps": 1000}},
                     "serving": {"replicas": 2},
                     "confidential": {"profile": "none", "required": False}}}


def test_create_assigns_identity_version_and_generation(api: Client, ns: str) -> None:
    created = api.create(PB.format(ns=ns), budget("b"))
    meta = created["metadata"]
    assert len(meta["uid"]) == 36 and meta["creationTimestamp"].endswith("Z")
    assert meta["generation"] == 1 and int(meta["resourceVersion"]) > 0
    again = api.create(CM.format(ns=ns), {"metadata": {"name": "c"}, "data": {"a": "1"}})
    assert int(again["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])
    with pytest.raises(ApiFailure) as exc:
        api.create(PB.format(ns=ns), budget("b"))
    assert exc.value.status == 409 and exc.value.body["reason"] == "AlreadyExists"


def test_generation_counts_spec_changes_only(api: Client, ns: str) -> None:
    path = PB.format(ns=ns) + "/b"
    api.create(PB.format(ns=ns), budget("b"))
    labelled = api.merge(path, {"metadata": {"labels": {"x": "y"}}})
    assert labelled["metadata"]["generation"] == 1
    with_status = api.merge(path + "/status", {"status": {"epsilonSpent": "1"}})
    assert with_status["metadata"]["generation"] == 1
    edited = api.merge(path, {"spec": {"epsilon": "5"}})
    assert edited["metadata"]["generation"] == 2


def test_stale_resource_version_is_a_conflict(api: Client, ns: str) -> None:
    path = PB.format(ns=ns) + "/b"
    created = api.create(PB.format(ns=ns), budget("b"))
    old_rv = created["metadata"]["resourceVersion"]
    api.merge(path, {"spec": {"epsilon": "5"}})
    stale = {**created, "spec": {**created["spec"], "epsilon": "6"}}
    with pytest.raises(ApiFailure) as exc:
        api.replace(path, stale)
    assert exc.value.status == 409 and exc.value.body["reason"] == "Conflict"
    with pytest.raises(ApiFailure) as exc:
        api.merge(path, {"metadata": {"resourceVersion": old_rv}, "spec": {"epsilon": "7"}})
    assert exc.value.status == 409
    with pytest.raises(ApiFailure) as exc:  # a custom resource PUT must carry a version
        api.replace(path, {**stale, "metadata": {"name": "b"}})
    assert exc.value.status == 422
    fresh = api.get(path)
    assert fresh["spec"]["epsilon"] == "5"
    replaced = api.replace(path, {**fresh, "spec": {**fresh["spec"], "epsilon": "6"}})
    assert replaced["spec"]["epsilon"] == "6"


def test_json_patch_test_failure_is_unprocessable(api: Client, ns: str) -> None:
    path = PB.format(ns=ns) + "/b"
    api.create(PB.format(ns=ns), budget("b"))
    with pytest.raises(ApiFailure) as exc:
        api.json_patch(path, [{"op": "test", "path": "/metadata/resourceVersion", "value": "1"},
                              {"op": "add", "path": "/metadata/finalizers", "value": ["x/y"]}])
    assert exc.value.status == 422


def test_status_subresource_separates_spec_and_status(api: Client, ns: str) -> None:
    path = PB.format(ns=ns) + "/b"
    created = api.create(PB.format(ns=ns), {**budget("b"), "status": {"epsilonSpent": "9"}})
    assert "status" not in created  # status on create is dropped
    ignored = api.merge(path, {"status": {"epsilonSpent": "3"}, "spec": {"epsilon": "5"}})
    assert "status" not in ignored and ignored["spec"]["epsilon"] == "5"
    written = api.merge(path + "/status", {"status": {"epsilonSpent": "3"},
                                           "spec": {"epsilon": "99"}})
    assert written["status"]["epsilonSpent"] == "3" and written["spec"]["epsilon"] == "5"
    with pytest.raises(ApiFailure) as exc:  # status is validated against the schema too
        api.merge(path + "/status", {"status": {"ledger": "nope"}})
    assert exc.value.status == 422


def test_no_op_write_keeps_the_resource_version(api: Client, ns: str) -> None:
    path = PB.format(ns=ns) + "/b"
    created = api.create(PB.format(ns=ns), budget("b"))
    same = api.merge(path, {"spec": {"epsilon": created["spec"]["epsilon"]}})
    assert same["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]


def test_schema_validation_names_the_field_and_defaults(api: Client, ns: str) -> None:
    with pytest.raises(ApiFailure) as exc:
        api.create(PB.format(ns=ns), budget("bad", epsilon="0"))
    failure = exc.value.body
    assert exc.value.status == 422 and failure["reason"] == "Invalid"
    assert "spec.epsilon" in failure["message"]
    assert failure["details"]["causes"][0]["field"] == "spec.epsilon"
    with pytest.raises(ApiFailure) as exc:
        api.create(PB.format(ns=ns), budget("bad", accountant="exact"))
    assert "spec.accountant" in exc.value.body["message"]
    created = api.create(PB.format(ns=ns), {**budget("ok"), "spec": {
        "epsilon": "1", "delta": "1e-6", "unknownField": 1}})
    assert created["spec"]["accountant"] == "rdp"  # defaulted from the CRD schema
    assert created["spec"]["alertThresholds"] == ["0.8", "0.95"]
    assert "unknownField" not in created["spec"]  # pruned
    with pytest.raises(ApiFailure) as exc:
        api.request("POST", PB.format(ns=ns) + "?fieldValidation=Strict",
                    {**budget("strict"), "spec": {"epsilon": "1", "delta": "1e-6", "x": 1}})
    assert exc.value.status == 400 and "spec.x" in exc.value.body["message"]


def test_cel_rules_are_enforced(api: Client, ns: str) -> None:
    bad = model("m")
    bad["spec"]["confidential"] = {"profile": "none", "required": True}
    with pytest.raises(ApiFailure) as exc:
        api.create(PM.format(ns=ns), bad)
    assert exc.value.status == 422 and "spec.confidential.required" in exc.value.body["message"]


def test_owner_references_cascade_on_delete(api: Client, ns: str) -> None:
    owner = api.create(PM.format(ns=ns), model("m"))
    ref = {"apiVersion": "dpserve.io/v1alpha1", "kind": "PrivateModel", "name": "m",
           "uid": owner["metadata"]["uid"], "controller": True}
    api.create(CM.format(ns=ns), {"metadata": {"name": "owned", "ownerReferences": [ref]}})
    other = {**ref, "uid": "11111111-2222-3333-4444-555555555555", "name": "other"}
    api.create(CM.format(ns=ns), {"metadata": {"name": "two-owners",
                                               "ownerReferences": [ref, other]}})
    api.create(CM.format(ns=ns), {"metadata": {"name": "free"}})
    api.delete(PM.format(ns=ns) + "/m")
    names = {c["metadata"]["name"] for c in api.items(CM.format(ns=ns))}
    # The dependent whose other owner never existed goes too (no live owner left).
    assert names == {"free"}


def test_orphan_propagation_keeps_dependents(api: Client, ns: str) -> None:
    owner = api.create(PM.format(ns=ns), model("m"))
    ref = {"apiVersion": "dpserve.io/v1alpha1", "kind": "PrivateModel", "name": "m",
           "uid": owner["metadata"]["uid"]}
    api.create(CM.format(ns=ns), {"metadata": {"name": "owned", "ownerReferences": [ref]}})
    api.delete(PM.format(ns=ns) + "/m", {"propagationPolicy": "Orphan"})
    kept = api.get(CM.format(ns=ns) + "/owned")
    assert "ownerReferences" not in kept["metadata"]


def test_finalizers_hold_deletion(api: Client, ns: str) -> None:
    path = PB.format(ns=ns) + "/b"
    api.create(PB.format(ns=ns), {**budget("b"), "metadata": {"name": "b",
                                                             "finalizers": ["x.io/hold"]}})
    marked = api.delete(path)
    assert marked["metadata"]["deletionTimestamp"]
    with pytest.raises(ApiFailure) as exc:
        api.merge(path, {"metadata": {"finalizers": ["x.io/hold", "x.io/new"]}})
    assert exc.value.status == 422
    assert api.find(path) is not None
    api.merge(path, {"metadata": {"finalizers": None}})
    assert api.find(path) is None


def test_scale_subresource(api: Client, ns: str) -> None:
    path = PM.format(ns=ns) + "/m"
    api.create(PM.format(ns=ns), model("m"))
    scale = api.get(path + "/scale")
    assert scale["kind"] == "Scale" and scale["spec"]["replicas"] == 2
    api.merge(path + "/scale", {"spec": {"replicas": 3}})
    assert api.get(path)["spec"]["serving"]["replicas"] == 3


def test_token_review(server: LocalKubeServer, api: Client) -> None:
    server.call(lambda kube: kube.tokens.register(
        "tok-1", namespace="ns1", service_account="m-dpserve", pod_name="m-abc",
        audiences=["dpserve-ledger"]))
    review = api.create("/apis/authentication.k8s.io/v1/tokenreviews",
                        {"spec": {"token": "tok-1", "audiences": ["dpserve-ledger"]}})
    status = review["status"]
    assert status["authenticated"] is True
    assert status["user"]["username"] == "system:serviceaccount:ns1:m-dpserve"
    assert status["user"]["extra"]["authentication.kubernetes.io/pod-name"] == ["m-abc"]
    wrong = api.create("/apis/authentication.k8s.io/v1/tokenreviews",
                       {"spec": {"token": "tok-1", "audiences": ["other"]}})
    assert wrong["status"]["authenticated"] is False
    unknown = api.create("/apis/authentication.k8s.io/v1/tokenreviews",
                         {"spec": {"token": "nope"}})
    assert unknown["status"]["authenticated"] is False


def _watch(server: LocalKubeServer, path: str, events: list[dict[str, Any]],
           stop_after: int) -> threading.Thread:
    def run() -> None:
        with urllib.request.urlopen(server.url + path, timeout=10) as resp:
            for line in resp:
                if line.strip():
                    events.append(json.loads(line))
                if len(events) >= stop_after:
                    return

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_watch_resumes_from_a_resource_version_and_follows_selectors(
    server: LocalKubeServer, api: Client, ns: str
) -> None:
    first = api.create(CM.format(ns=ns), {"metadata": {"name": "a", "labels": {"k": "v"}}})
    api.merge(CM.format(ns=ns) + "/a", {"data": {"x": "1"}})
    api.create(CM.format(ns=ns), {"metadata": {"name": "b"}})
    rv = first["metadata"]["resourceVersion"]
    events: list[dict[str, Any]] = []
    thread = _watch(server, CM.format(ns=ns) + f"?watch=true&resourceVersion={rv}", events, 3)
    wait_until(lambda: len(events) >= 2, what="the replayed events")  # the watch is open
    api.delete(CM.format(ns=ns) + "/b")
    thread.join(5)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("MODIFIED", "a"), ("ADDED", "b"), ("DELETED", "b")]

    selected: list[dict[str, Any]] = []
    thread = _watch(server, CM.format(ns=ns) + "?watch=true&labelSelector=k%3Dv", selected, 3)
    wait_until(lambda: len(selected) >= 1, what="the initial ADDED")  # the watch is open
    api.merge(CM.format(ns=ns) + "/a", {"metadata": {"labels": {"k": "w"}}})  # leaves
    api.merge(CM.format(ns=ns) + "/a", {"metadata": {"labels": {"k": "v"}}})  # enters
    thread.join(5)
    assert [e["type"] for e in selected] == ["ADDED", "DELETED", "ADDED"]


def test_writes_are_counted(server: LocalKubeServer, api: Client, ns: str) -> None:
    since = time.monotonic()
    api.create(CM.format(ns=ns), {"metadata": {"name": "w"}})
    api.merge(CM.format(ns=ns) + "/w", {"data": {"a": "b"}})
    api.get(CM.format(ns=ns) + "/w")
    assert server.call(lambda kube: kube.count_writes(since)) == 2


def test_invalid_request_bodies_are_client_errors(api: Client, ns: str) -> None:
    # Server-side apply: without a field manager, or without apiVersion and kind, a 400.
    with pytest.raises(ApiFailure) as exc:
        api.request("PATCH", CM.format(ns=ns) + "/none", {"a": 1}, "application/apply-patch+yaml")
    assert exc.value.status == 400 and "fieldManager" in str(exc.value)
    api.create(CM.format(ns=ns), {"metadata": {"name": "c"}})
    with pytest.raises(ApiFailure) as exc:
        api.request("PATCH", CM.format(ns=ns) + "/c?fieldManager=t", {"a": 1},
                    "application/apply-patch+yaml")
    assert exc.value.status == 400 and "apiVersion" in str(exc.value)
    with pytest.raises(ApiFailure) as exc:
        api.request("PATCH", CM.format(ns=ns) + "/c", {"a": 1}, "application/x-unknown+yaml")
    assert exc.value.status == 415
    with pytest.raises(ApiFailure) as exc:
        api.create(CM.format(ns=ns), {"metadata": {}})
    assert exc.value.status == 422
    with pytest.raises(ApiFailure) as exc:
        api.create("/api/v1/namespaces/missing/configmaps", {"metadata": {"name": "x"}})
    assert exc.value.status == 404


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kubectl_applies_and_prints_printer_columns(
    server: LocalKubeServer, ns: str, tmp_path: Path
) -> None:
    manifest = tmp_path / "pb.json"
    body = budget("kb")
    body["metadata"]["namespace"] = ns
    manifest.write_text(json.dumps(body))
    kubectl = ["kubectl", "--kubeconfig", str(server.kubeconfig)]
    applied = subprocess.run([*kubectl, "apply", "-f", str(manifest)], capture_output=True,
                             text=True, timeout=30)
    assert applied.returncode == 0, applied.stderr
    got = subprocess.run([*kubectl, "get", "pb", "-n", ns, "-o", "wide"], capture_output=True,
                         text=True, timeout=30)
    assert got.returncode == 0, got.stderr
    header, row = got.stdout.splitlines()[:2]
    assert "SPENT" in header and "LIMIT" in header and "ACCOUNTANT" in header
    assert row.split()[0] == "kb" and "rdp" in row
    body["spec"]["epsilon"] = "-1"
    manifest.write_text(json.dumps(body))
    refused = subprocess.run([*kubectl, "apply", "-f", str(manifest)], capture_output=True,
                             text=True, timeout=30)
    assert refused.returncode != 0 and "spec.epsilon" in refused.stderr


def test_services_get_cluster_ips_as_from_an_api_server(api: Client, ns: str) -> None:
    """The operator pins the ledger Service's ClusterIP in serving pods: allocated, unique,
    none for headless and ExternalName Services, kept by an update that omits it."""
    svc = f"/api/v1/namespaces/{ns}/services"
    ports = [{"port": 80}]
    first = api.create(svc, {"metadata": {"name": "a"}, "spec": {"ports": ports}})["spec"]
    second = api.create(svc, {"metadata": {"name": "b"}, "spec": {"ports": ports}})["spec"]
    assert first["clusterIP"].startswith("10.96.") and first["clusterIPs"] == [first["clusterIP"]]
    assert second["clusterIP"] != first["clusterIP"]
    chosen = api.create(svc, {"metadata": {"name": "c"},
                              "spec": {"ports": ports, "clusterIP": "10.96.250.1"}})["spec"]
    assert chosen["clusterIPs"] == ["10.96.250.1"]
    headless = api.create(svc, {"metadata": {"name": "h"},
                                "spec": {"ports": ports, "clusterIP": "None"}})["spec"]
    assert headless["clusterIP"] == "None" and "clusterIPs" not in headless
    external = api.create(svc, {"metadata": {"name": "e"}, "spec": {
        "type": "ExternalName", "externalName": "x.example.org"}})["spec"]
    assert "clusterIP" not in external
    live = api.get(f"{svc}/a")
    replaced = api.replace(f"{svc}/a", {"metadata": {"name": "a", "labels": {"x": "1"}},
                                        "spec": {"ports": ports}})
    assert replaced["spec"]["clusterIP"] == live["spec"]["clusterIP"]

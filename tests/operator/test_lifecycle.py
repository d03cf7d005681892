"""PrivateModel / PrivacyBudget lifecycle with the real operator process on LocalKube."""

from __future__ import annotations

import itertools
import json
import time
import urllib.request
import uuid
from typing import Any

from operator_support import Cluster, budget_body, condition, model_body, wait_until

from dpserve.ledger.auth import AUDIENCE
from dpserve.ledger.lease_ids import sequenced_id
from dpserve.resources.names import service_account_name
from pod_support import kube_serving_pod

_SEQUENCE = itertools.count(1)  # the test sidecar's lease sequence: each lease a new one


def _ready_model(cluster: Cluster, ns: str, name: str = "m", **kwargs: Any) -> dict[str, Any]:
    api = cluster.api
    api.create(cluster.pb(ns), budget_body("b"))
    api.create(cluster.pm(ns), model_body(name, "b", **kwargs))
    return wait_until(
        lambda: (m := api.get(cluster.pm(ns, name)))
        and (condition(m, "Ready") or {}).get("status") == "True" and m,
        what=f"{name} Ready",
    )


def test_model_renders_owned_objects_and_becomes_ready(cluster: Cluster) -> None:
    api, ns = cluster.api, cluster.namespace()
    model = _ready_model(cluster, ns)
    uid = model["metadata"]["uid"]
    for kind, name in (("deployments", "m"), ("services", "m"), ("configmaps", "m-filter"),
                       ("serviceaccounts", "m-dpserve"), ("networkpolicies", "m")):
        obj = api.get(cluster.path(ns, kind, name))
        assert [r["uid"] for r in obj["metadata"]["ownerReferences"]] == [uid], kind
    deployment = api.get(cluster.path(ns, "deployments", "m"))
    assert deployment["spec"]["replicas"] == 1
    containers = {c["name"] for c in deployment["spec"]["template"]["spec"]["containers"]}
    assert containers == {"model", "filter"}
    status = model["status"]
    assert status["phase"] == "Serving" and status["replicas"] == 1
    assert status["observedGeneration"] == model["metadata"]["generation"]
    types = {c["type"]: c for c in status["conditions"]}
    assert set(types) == {"Ready", "BudgetAvailable", "Confidential", "Retraining",
                          "Reconciling", "Stalled"}
    assert (types["Reconciling"]["status"], types["Stalled"]["status"]) == ("False", "False")
    assert status["accepted"] == {"budgetRef": "b", "artifact": "pvc://models/m/v1",
                                  "version": "v1", "spent": False}
    assert all(c["observedGeneration"] == 1 for c in types.values())
    assert types["BudgetAvailable"]["status"] == "True"
    budget = api.get(cluster.pb(ns, "b"))
    assert "dpserve.io/budget-protection" in budget["metadata"]["finalizers"]
    assert condition(budget, "Ready") is not None  # written by the ledger path

    # Quiet steady state: a reconcile with nothing to do writes nothing. An edit of the
    # owned Deployment's annotations (which the operator does not manage) makes it look
    # again; once that reconcile has finished, the namespace saw only the test's own write.
    since = time.monotonic()
    finished = _reconciles_finished(cluster)
    api.merge(cluster.path(ns, "deployments", "m"),
              {"metadata": {"annotations": {"test.dpserve.io/poke": "1"}}})
    wait_until(lambda: _reconciles_finished(cluster) > finished, what="a reconcile after the poke")

    def written() -> list[str]:
        return cluster.server.call(lambda kube: [
            f"{w.method} {w.path}" for w in kube.writes
            if w.at >= since and f"/namespaces/{ns}/" in w.path])

    assert written() == [f"PATCH {cluster.path(ns, 'deployments', 'm')}"], written()


def _reconciles_finished(cluster: Cluster) -> float:
    """PrivateModel reconciles the operator has completed (its duration histogram's count)."""
    with urllib.request.urlopen(cluster.operator.metrics_url, timeout=10) as resp:
        text = resp.read().decode()
    prefix = 'dpserve_reconcile_duration_seconds_count{kind="PrivateModel"} '
    return next((float(line[len(prefix):]) for line in text.splitlines()
                 if line.startswith(prefix)), 0.0)


def test_spec_edit_is_applied_and_conditions_keep_transition_times(cluster: Cluster) -> None:
    api, ns = cluster.api, cluster.namespace()
    before = _ready_model(cluster, ns)
    confidential = condition(before, "Confidential")
    api.merge(cluster.pm(ns, "m"), {"spec": {"serving": {"replicas": 2}}})
    wait_until(lambda: api.get(cluster.path(ns, "deployments", "m"))["spec"]["replicas"] == 2,
               what="Deployment scaled to 2")
    pdb = wait_until(lambda: api.find(cluster.path(ns, "poddisruptionbudgets", "m")),
                     what="PodDisruptionBudget for 2 replicas")
    assert pdb["metadata"]["ownerReferences"][0]["name"] == "m"
    after = wait_until(
        lambda: (m := api.get(cluster.pm(ns, "m")))["status"]["observedGeneration"] == 2
        and (condition(m, "Ready") or {}).get("status") == "True" and m,
        what="observedGeneration 2",
    )
    now_confidential = condition(after, "Confidential")
    assert now_confidential is not None and confidential is not None
    assert now_confidential["observedGeneration"] == 2
    assert now_confidential["lastTransitionTime"] == confidential["lastTransitionTime"]


def test_drift_is_reverted_and_deleted_children_recreated(cluster: Cluster) -> None:
    api, ns = cluster.api, cluster.namespace()
    _ready_model(cluster, ns)
    path = cluster.path(ns, "deployments", "m")
    api.merge(path, {"spec": {"replicas": 7}})
    wait_until(lambda: api.get(path)["spec"]["replicas"] == 1, what="replicas reverted")
    old_uid = api.get(path)["metadata"]["uid"]
    api.delete(path)
    recreated = wait_until(lambda: (d := api.find(path)) and d["metadata"]["uid"] != old_uid
                           and d, what="Deployment recreated")
    assert recreated["spec"]["replicas"] == 1
    cm = cluster.path(ns, "configmaps", "m-filter")
    original = api.get(cm)["data"]
    api.merge(cm, {"data": {next(iter(original)): "{}"}})
    wait_until(lambda: api.get(cm)["data"] == original, what="ConfigMap reverted")


def test_child_stripped_of_its_managed_by_label_is_restored(cluster: Cluster) -> None:
    """The drift watches filter on the label: once it is gone no event of the object comes,
    so the next reconcile (here: woken by a ConfigMap edit) must read it from the server,
    not from what the watch last showed."""
    api, ns = cluster.api, cluster.namespace()
    _ready_model(cluster, ns)
    path = cluster.path(ns, "deployments", "m")
    api.merge(path, {"metadata": {"labels": {"app.kubernetes.io/managed-by": None}},
                     "spec": {"replicas": 7}})
    cm = cluster.path(ns, "configmaps", "m-filter")
    original = api.get(cm)["data"]
    api.merge(cm, {"data": {next(iter(original)): "{}"}})
    wait_until(lambda: api.get(cm)["data"] == original, what="ConfigMap reverted")
    restored = wait_until(
        lambda: (d := api.get(path))["metadata"]["labels"].get("app.kubernetes.io/managed-by")
        and d, what="managed-by label restored")
    assert restored["spec"]["replicas"] == 1


def test_deleting_the_model_collects_its_objects(cluster: Cluster) -> None:
    api, ns = cluster.api, cluster.namespace()
    _ready_model(cluster, ns)
    api.delete(cluster.pm(ns, "m"))
    wait_until(lambda: api.find(cluster.pm(ns, "m")) is None, what="model gone")
    for kind in ("deployments", "services", "configmaps", "serviceaccounts", "networkpolicies"):
        assert api.items(cluster.path(ns, kind)) == [], kind
    assert api.find(cluster.pb(ns, "b")) is not None  # budgets outlive models


def _pod_token(cluster: Cluster, ns: str, model: str) -> str:
    token = f"token-{uuid.uuid4().hex}"
    # The ledger grants only to a serving pod of the model: its object must exist.
    cluster.server.call(lambda kube: kube.tokens.register(
        token, namespace=ns, service_account=service_account_name(model), pod_name="pod-0",
        pod_uid=kube_serving_pod(kube, model, "pod-0", namespace=ns),
        audiences=[AUDIENCE]))
    return token


def _lease(cluster: Cluster, token: str, ns: str, model: str, mechanism: dict[str, Any],
           version: str = "v1", requested: int = 1000) -> tuple[int, dict[str, Any]]:
    return cluster.lease(token, {
        "leaseId": sequenced_id("pod-0", None, next(_SEQUENCE)), "model": f"{ns}/{model}",
        "modelVersion": version, "pod": "pod-0", "mechanism": mechanism,
        "requested": requested})


def _exhaust(cluster: Cluster, ns: str, model: str, mechanism: dict[str, Any],
             version: str = "v1") -> int:
    token = _pod_token(cluster, ns, model)
    granted = 0
    for _ in range(500):
        code, body = _lease(cluster, token, ns, model, mechanism, version)
        if code == 429:
            assert body["reason"] == "BudgetExhausted"
            return granted
        assert code == 200, body
        granted += body["granted"]
    raise AssertionError("the budget never ran out")


def test_exhaustion_scales_to_zero_and_raising_epsilon_restores(cluster: Cluster) -> None:
    api, ns = cluster.api, cluster.namespace()
    model = _ready_model(cluster, ns, replicas=2)
    granted = _exhaust(cluster, ns, "m", model["spec"]["serving"]["mechanism"])
    assert granted >= 1
    # The ledger's Exhausted condition wakes the model's reconcile (no polling period to wait
    # out); the wait is a condition, with a bound only for a hung operator.
    exhausted = wait_until(
        lambda: (m := api.get(cluster.pm(ns, "m")))["status"]["phase"] == "BudgetExhausted" and m,
        what="phase BudgetExhausted")
    assert api.get(cluster.path(ns, "deployments", "m"))["spec"]["replicas"] == 0
    assert condition(exhausted, "BudgetAvailable")["status"] == "False"  # type: ignore[index]
    assert condition(exhausted, "Ready")["reason"] == "BudgetExhausted"  # type: ignore[index]
    assert exhausted["status"]["restoreReplicas"] == 2
    cluster.wait_event(ns, "m", "BudgetExhausted")

    api.merge(cluster.pb(ns, "b"), {"spec": {"epsilon": "1000"}})
    wait_until(lambda: api.get(cluster.path(ns, "deployments", "m"))["spec"]["replicas"] == 2,
               timeout_s=10, what="replicas restored")
    wait_until(lambda: api.get(cluster.pm(ns, "m"))["status"]["phase"] == "Serving",
               what="serving again")


def test_budget_in_use_is_not_deleted(cluster: Cluster) -> None:
    api, ns = cluster.api, cluster.namespace()
    _ready_model(cluster, ns)
    api.delete(cluster.pb(ns, "b"))
    message = cluster.wait_event(ns, "b", "DeletionBlocked")["message"]
    held = api.get(cluster.pb(ns, "b"))
    assert held["metadata"]["deletionTimestamp"]
    assert "in use by PrivateModel m" in message
    api.delete(cluster.pm(ns, "m"))
    wait_until(lambda: api.find(cluster.pb(ns, "b")) is None, what="budget released")


def test_invalid_object_is_surfaced_not_crashed_on(cluster: Cluster) -> None:
    api, ns = cluster.api, cluster.namespace()
    api.create(cluster.pb(ns, ""), budget_body("b"))
    bad = model_body("bad", "b")
    bad["metadata"]["namespace"] = ns
    bad["spec"]["serving"]["replicas"] = -3  # the CRD schema forbids it; written around it
    bad["spec"]["serving"]["mechanism"] = {"type": "gaussian"}
    cluster.server.call(lambda kube: kube.store.force(
        kube.kind("dpserve.io/v1alpha1", "privatemodels"), bad))
    failed = wait_until(
        lambda: (m := api.get(cluster.pm(ns, "bad"))).get("status", {}).get("phase") == "Failed"
        and m, what="phase Failed")
    ready = condition(failed, "Ready")
    assert ready is not None and ready["reason"] == "InvalidSpec"
    assert "spec.serving.replicas" in ready["message"]
    cluster.wait_event(ns, "bad", "InvalidSpec")
    assert api.items(cluster.path(ns, "deployments")) == []
    # The operator is alive and still reconciles other models.
    assert cluster.operator.process.poll() is None
    api.create(cluster.pm(ns), model_body("good", "b"))
    wait_until(lambda: (condition(api.get(cluster.pm(ns, "good")), "Ready") or {}).get(
        "status") == "True", what="good model Ready")


def test_required_confidential_profile_without_runtime_class_blocks(cluster: Cluster) -> None:
    api, ns = cluster.api, cluster.namespace()
    api.create(cluster.pb(ns), budget_body("b"))
    api.create(cluster.pm(ns), model_body("tee", "b", profile="coco-snp", required=True))
    blocked = wait_until(
        lambda: (m := api.get(cluster.pm(ns, "tee"))).get("status", {}).get("phase") == "Blocked"
        and m, what="phase Blocked")
    confidential = condition(blocked, "Confidential")
    assert confidential is not None and confidential["status"] == "False"
    assert confidential["reason"] == "RuntimeClassMissing"
    deployment = api.get(cluster.path(ns, "deployments", "tee"))
    assert deployment["spec"]["replicas"] == 0
    assert deployment["spec"]["template"]["spec"]["runtimeClassName"] == "kata-qemu-snp"
    # The cluster gains the runtime class: the model is placed without any edit of its own.
    api.create("/apis/node.k8s.io/v1/runtimeclasses",
               {"metadata": {"name": "kata-qemu-snp"}, "handler": "kata-qemu-snp"})
    wait_until(lambda: api.get(cluster.path(ns, "deployments", "tee"))["spec"]["replicas"] == 1,
               what="placed once the RuntimeClass exists")
    # The Deployment is written before the status of the same reconcile: wait for the status.
    wait_until(lambda: (condition(api.get(cluster.pm(ns, "tee")), "Confidential") or {})
               .get("status") == "True", what="Confidential=True once placed")


def test_crash_looping_pods_make_the_model_not_ready(cluster: Cluster) -> None:
    api, ns = cluster.api, cluster.namespace()
    model = _ready_model(cluster, ns)
    labels = dict(item.split("=") for item in model["status"]["selector"].split(","))
    pod = {"metadata": {"name": "m-crashing", "labels": labels},
           "spec": {"containers": [{"name": "model", "image": "x"}]},
           "status": {"phase": "Running", "containerStatuses": [{
               "name": "model", "ready": False, "restartCount": 5,
               "state": {"waiting": {"reason": "CrashLoopBackOff",
                                     "message": "back-off restarting failed container"}}}]}}
    api.create(cluster.path(ns, "pods"), pod)
    not_ready = wait_until(
        lambda: (c := condition(api.get(cluster.pm(ns, "m")), "Ready")) and c["status"] == "False"
        and c, what="Ready False")
    assert not_ready["reason"] == "CrashLoopBackOff"
    api.delete(cluster.path(ns, "pods", "m-crashing"))
    wait_until(lambda: (condition(api.get(cluster.pm(ns, "m")), "Ready") or {}).get(
        "status") == "True", what="Ready again")


def test_retrain_trains_the_next_version_on_a_new_budget(cluster: Cluster) -> None:
    api, ns = cluster.api, cluster.namespace()
    api.create(cluster.pb(ns), budget_body("b"))
    body = model_body("m", "b", policy="Retrain")
    body["spec"]["retraining"] = {
        "dataset": "pvc://datasets/triage/2027q1.npz", "targetEpsilon": "3",
        "nextBudget": {"epsilon": "8", "delta": "1e-6"}}
    api.create(cluster.pm(ns), body)
    model = wait_until(lambda: (m := api.get(cluster.pm(ns, "m")))
                       and (condition(m, "Ready") or {}).get("status") == "True" and m,
                       what="v1 Ready")
    _exhaust(cluster, ns, "m", model["spec"]["serving"]["mechanism"])
    job_path = cluster.path(ns, "jobs", "m-train-v2")
    job = wait_until(lambda: api.find(job_path), timeout_s=10, what="training Job")
    retraining = wait_until(lambda: (m := api.get(cluster.pm(ns, "m")))["status"].get(
        "phase") == "Retraining" and m, what="phase Retraining")
    assert condition(retraining, "Retraining")["status"] == "True"  # type: ignore[index]
    assert api.get(cluster.path(ns, "deployments", "m"))["spec"]["replicas"] == 0

    # The trainer's pod reports its DP-SGD run; the Job controller marks the Job complete.
    report = {"noiseMultiplier": 1.1, "sampleRate": 0.01, "steps": 200, "sampling": "poisson",
              "epsilon": 1.2, "delta": 1e-6, "accuracy": 0.93, "version": "v2",
              "artifact": "/output/v2"}
    pod_labels = dict(job["spec"]["template"]["metadata"]["labels"], **{"job-name": "m-train-v2"})
    api.create(cluster.path(ns, "pods"), {
        "metadata": {"name": "m-train-v2-abcde", "labels": pod_labels},
        "spec": {"containers": [{"name": "train", "image": "x"}]},
        "status": {"phase": "Succeeded", "containerStatuses": [{
            "name": "train", "ready": False, "restartCount": 0,
            "state": {"terminated": {"exitCode": 0, "reason": "Completed",
                                     "message": json.dumps(report)}}}]}})
    api.merge(job_path + "/status", {"status": {"succeeded": 1, "conditions": [
        {"type": "Complete", "status": "True"}]}})

    rolled = wait_until(lambda: (m := api.get(cluster.pm(ns, "m")))["status"].get(
        "modelVersion") == "v2" and m["status"].get("phase") == "Serving" and m,
        timeout_s=15, what="v2 serving")
    status = rolled["status"]
    assert status["budget"] == "b-v2"
    assert [v["version"] for v in status["versions"]] == ["v1"]
    assert status["versions"][0]["budget"] == "b"
    assert float(status["lifetimeEpsilon"]) >= float(status["versions"][0]["epsilonSpent"])
    new_budget = api.get(cluster.pb(ns, "b-v2"))
    assert "ownerReferences" not in new_budget["metadata"]  # budgets outlive models
    entries = new_budget["status"]["ledger"]
    assert [(e["kind"], e["modelVersion"]) for e in entries] == [("training", "v2")]
    deployment = api.get(cluster.path(ns, "deployments", "m"))
    assert deployment["spec"]["replicas"] == 1
    assert deployment["metadata"]["labels"]["app.kubernetes.io/version"] == "v2"
    assert len(api.items(cluster.path(ns, "jobs"))) == 1  # never two Jobs for one version
    filter_json = json.loads(api.get(cluster.path(ns, "configmaps", "m-filter"))["data"][
        "filter.json"])
    assert filter_json["modelVersion"] == "v2"  # the new sidecars ask for v2 leases

    # During the rollout the old v1 pods still ask: charged to v1's (exhausted) budget b,
    # never to b-v2; the v2 pods spend b-v2; a version the model never had is refused.
    mechanism = rolled["spec"]["serving"]["mechanism"]
    token = _pod_token(cluster, ns, "m")
    old_ledger = api.get(cluster.pb(ns, "b"))["status"]["ledger"]
    code, answer = _lease(cluster, token, ns, "m", mechanism, "v1")
    assert (code, answer["reason"]) == (429, "BudgetExhausted"), answer
    assert api.get(cluster.pb(ns, "b"))["status"]["ledger"] == old_ledger
    code, answer = _lease(cluster, token, ns, "m", mechanism, "v2", requested=5)
    assert code == 200 and answer["granted"] >= 1, answer
    granted = answer["granted"]
    code, answer = _lease(cluster, token, ns, "m", mechanism, "v3")
    assert (code, answer["reason"]) == (409, "VersionMismatch"), answer
    entries = api.get(cluster.pb(ns, "b-v2"))["status"]["ledger"]
    assert [(e["kind"], e["modelVersion"], e["count"]) for e in entries] == [
        ("training", "v2", 1), ("query", "v2", granted)]
    assert api.get(cluster.pb(ns, "b"))["status"]["ledger"] == old_ledger

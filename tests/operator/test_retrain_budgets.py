"""A retrain never targets a budget the model already spent (issue 12, item 2).

With a fixed ``retraining.nextBudget.name``, exhausting version 2's budget used to retrain
into the same exhausted budget again and again; now the retrain stops with a condition and
an Event, and naming a fresh budget resumes it.
"""

from __future__ import annotations

import itertools
import json
import uuid
from typing import Any

from operator_support import Cluster, budget_body, condition, model_body, wait_until

from dpserve.ledger.auth import AUDIENCE
from dpserve.ledger.lease_ids import sequenced_id
from dpserve.resources.names import service_account_name
from pod_support import kube_serving_pod

_SEQUENCE = itertools.count(1)  # the test sidecar's lease sequence: each lease a new one


def _token(cluster: Cluster, ns: str) -> str:
    token = f"token-{uuid.uuid4().hex}"
    # The ledger grants only to a serving pod of the model: its object must exist.
    cluster.server.call(lambda kube: kube.tokens.register(
        token, namespace=ns, service_account=service_account_name("m"), pod_name="pod-0",
        pod_uid=kube_serving_pod(kube, "m", "pod-0", namespace=ns),
        audiences=[AUDIENCE]))
    return token


def _exhaust(cluster: Cluster, ns: str, mechanism: dict[str, Any], version: str) -> None:
    token = _token(cluster, ns)
    for _ in range(500):
        code, body = cluster.lease(token, {
            "leaseId": sequenced_id("pod-0", None, next(_SEQUENCE)), "model": f"{ns}/m",
            "modelVersion": version, "pod": "pod-0", "mechanism": mechanism,
            "requested": 1000})
        if code == 429:
            return
        assert code == 200, body
    raise AssertionError("the budget never ran out")


def _complete(cluster: Cluster, ns: str, version: str, **extra: Any) -> None:
    """Play the Job controller and the trainer: a succeeded pod with its report."""
    api = cluster.api
    job_name = f"m-train-{version}"
    job = wait_until(lambda: api.find(cluster.path(ns, "jobs", job_name)), timeout_s=15,
                     what=f"Job {job_name}")
    report = {"noiseMultiplier": 1.1, "sampleRate": 0.01, "steps": 200, "sampling": "poisson",
              "epsilon": 1.2, "delta": 1e-6, "version": version, "artifact": f"/output/{version}",
              **extra}
    labels = dict(job["spec"]["template"]["metadata"]["labels"], **{"job-name": job_name})
    api.create(cluster.path(ns, "pods"), {
        "metadata": {"name": f"{job_name}-abcde", "labels": labels},
        "spec": {"containers": [{"name": "train", "image": "x"}]},
        "status": {"phase": "Succeeded", "containerStatuses": [{
            "name": "train", "ready": False, "restartCount": 0,
            "state": {"terminated": {"exitCode": 0, "reason": "Completed",
                                     "message": json.dumps(report)}}}]}})
    api.merge(cluster.path(ns, "jobs", job_name) + "/status", {"status": {
        "succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}})


def test_fixed_next_budget_pays_for_one_version_then_retraining_stops(
    cluster: Cluster,
) -> None:
    api, ns = cluster.api, cluster.namespace()
    api.create(cluster.pb(ns), budget_body("b"))
    body = model_body("m", "b", policy="Retrain")
    body["spec"]["retraining"] = {
        "dataset": "pvc://datasets/triage/2027q1.npz", "targetEpsilon": "3",
        "nextBudget": {"name": "window", "epsilon": "8", "delta": "1e-6"}}
    api.create(cluster.pm(ns), body)
    model = wait_until(lambda: (m := api.get(cluster.pm(ns, "m")))
                       and (condition(m, "Ready") or {}).get("status") == "True" and m,
                       what="v1 Ready")
    mechanism = model["spec"]["serving"]["mechanism"]
    _exhaust(cluster, ns, mechanism, "v1")
    _complete(cluster, ns, "v2")
    wait_until(lambda: api.get(cluster.pm(ns, "m"))["status"].get("modelVersion") == "v2",
               what="v2 on budget window")

    # v2 exhausts "window": the same fixed name must not pay for v3.
    _exhaust(cluster, ns, mechanism, "v2")
    stopped = wait_until(
        lambda: (m := api.get(cluster.pm(ns, "m")))
        and (condition(m, "Retraining") or {}).get("reason") == "NextBudgetSpent" and m,
        what="Retraining=False NextBudgetSpent")
    cond = condition(stopped, "Retraining")
    assert cond is not None and cond["status"] == "False"
    assert "window" in cond["message"] and "v2" in cond["message"]
    assert stopped["status"]["phase"] == "BudgetExhausted"
    assert stopped["status"]["budget"] == "window"
    assert api.find(cluster.path(ns, "jobs", "m-train-v3")) is None
    assert cluster.wait_event(ns, "m", "NextBudgetSpent")["type"] == "Warning"
    # Each budget counted once: v1's b and v2's window.
    spent = {name: float(api.get(cluster.pb(ns, name))["status"]["epsilonSpent"])
             for name in ("b", "window")}
    assert abs(float(stopped["status"]["lifetimeEpsilon"]) - sum(spent.values())) < 1e-3

    # Naming a fresh budget resumes the retrain.
    api.merge(cluster.pm(ns, "m"), {"spec": {"retraining": {"nextBudget": {"name": "window-2"}}}})
    wait_until(lambda: api.find(cluster.path(ns, "jobs", "m-train-v3")), timeout_s=15,
               what="Job for v3 after a fresh budget is named")


def test_a_dpsgd_retrain_is_charged_whatever_mode_the_trainer_reports(
    cluster: Cluster,
) -> None:
    """Item 5: the spec, not the trainer's termination message, decides the charge."""
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
    _exhaust(cluster, ns, model["spec"]["serving"]["mechanism"], "v1")
    _complete(cluster, ns, "v2", mode="pate")  # the trainer claims PATE: nothing to charge
    rolled = wait_until(lambda: (m := api.get(cluster.pm(ns, "m")))["status"].get(
        "modelVersion") == "v2" and m, what="v2")
    entries = api.get(cluster.pb(ns, "b-v2"))["status"]["ledger"]
    assert [(e["kind"], e["modelVersion"]) for e in entries] == [("training", "v2")]
    assert entries[0]["run"]  # the Job's uid
    cond = condition(rolled, "Retraining")
    assert cond is not None and cond["reason"] == "ReportMismatch"
    assert "'pate'" in cond["message"] and "'dpsgd'" in cond["message"]
    wait_until(lambda: any(e["reason"] == "ReportMismatch" and e["type"] == "Warning"
                           for e in cluster.events(ns, "m")), what="ReportMismatch Event")

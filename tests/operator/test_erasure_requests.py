"""ErasureRequests against a DP-SGD model on LocalKube, the operator process for real and the
Job controller played by the test: a NextRetrain request waits, an Immediate one starts the
retrain with every listed id excluded, the roll completes both; a damaged id list stops
every training Job; a model without retraining cannot be erased from."""

from __future__ import annotations

import json
from typing import Any

import pytest
from operator_support import Cluster, budget_body, condition, model_body, wait_until

from dpserve_testkit.localkube.client import ApiFailure

GROUP = "/apis/dpserve.io/v1alpha1"


def _dpsgd_model(name: str, budget: str) -> dict[str, Any]:
    body = model_body(name, budget)
    body["spec"]["model"] = {
        "artifact": f"pvc://models/{name}/v1", "format": "state-dict",
        "training": {"noiseMultiplier": "1.1", "sampleRate": "0.01", "steps": 100}}
    body["spec"]["retraining"] = {
        "dataset": "pvc://datasets/triage/2027q1.npz", "targetEpsilon": "2",
        "nextBudget": {"epsilon": "8", "delta": "1e-6"}}
    return body


def _request(name: str, model: str, ids: list[str], mode: str) -> dict[str, Any]:
    return {"apiVersion": "dpserve.io/v1alpha1", "kind": "ErasureRequest",
            "metadata": {"name": name},
            "spec": {"modelRef": {"name": model}, "recordIds": ids, "mode": mode,
                     "reason": "GDPR Art. 17"}}


def _er(cluster: Cluster, ns: str, name: str = "") -> str:
    return f"{GROUP}/namespaces/{ns}/erasurerequests" + (f"/{name}" if name else "")


def _phase(cluster: Cluster, ns: str, name: str) -> str | None:
    return (cluster.api.get(_er(cluster, ns, name)).get("status") or {}).get("phase")


def _complete(cluster: Cluster, ns: str, job_name: str, report: dict[str, Any]) -> None:
    api = cluster.api
    job = api.get(cluster.path(ns, "jobs", job_name))
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


def test_dpsgd_erasure_is_folded_into_the_retrain_that_excludes_the_ids(
    cluster: Cluster,
) -> None:
    api, ns = cluster.api, cluster.namespace()
    api.create(cluster.pb(ns), budget_body("b"))
    api.create(cluster.pm(ns), _dpsgd_model("m", "b"))
    wait_until(lambda: (condition(api.get(cluster.pm(ns, "m")), "Ready") or {}).get(
        "status") == "True", what="v1 Ready")

    api.create(_er(cluster, ns), _request("later", "m", ["r-1", "r-2"], "NextRetrain"))
    wait_until(lambda: _phase(cluster, ns, "later") == "Scheduled", what="Scheduled")
    cm = api.get(cluster.path(ns, "configmaps", "m-erasure"))
    assert json.loads(cm["data"]["ids.json"]) == ["r-1", "r-2"]
    assert cm["metadata"]["ownerReferences"][0]["kind"] == "PrivateModel"
    # Scheduled: no retrain yet, the model keeps serving v1.
    assert api.find(cluster.path(ns, "jobs", "m-train-v2")) is None

    api.create(_er(cluster, ns), _request("now", "m", ["r-2", "r-3"], "Immediate"))
    job = wait_until(lambda: api.find(cluster.path(ns, "jobs", "m-train-v2")),
                     what="the retrain Job of the Immediate request")
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--exclude-ids") + 1] == "/erasure/ids.json"
    assert job["metadata"]["annotations"]["dpserve.io/erased-ids"] == "3"
    wait_until(lambda: _phase(cluster, ns, "now") == "Retraining", what="Retraining")
    assert (condition(api.get(cluster.pm(ns, "m")), "Ready") or {}).get("status") == "True"

    _complete(cluster, ns, "m-train-v2", {
        "noiseMultiplier": 1.3, "sampleRate": 0.01, "steps": 150, "sampling": "poisson",
        "epsilon": 1.5, "delta": 1e-6, "version": "v2", "artifact": "/output/v2",
        "excludedIds": 3, "trainingSetSha256": "ab" * 32})
    for name in ("later", "now"):
        wait_until(lambda n=name: _phase(cluster, ns, n) == "Completed",  # type: ignore[misc]
                   what=f"{name} Completed")
        status = api.get(_er(cluster, ns, name))["status"]
        assert status["removedInVersion"] == "v2"
        assert status["trainingSetSha256"] == "ab" * 32
        assert status["completionTime"]
    model = api.get(cluster.pm(ns, "m"))["status"]
    assert model["modelVersion"] == "v2" and model["budget"] == "b-v2"
    assert model["erasure"]["applied"] == [
        {"version": "v2", "ids": 3, "trainingSetSha256": "ab" * 32}]
    cluster.wait_event(ns, "now", "ErasureCompleted")
    # Removed is removed: a later reconcile (a spec edit) starts no further retrain.
    generation = api.merge(cluster.pm(ns, "m"), {"spec": {"serving": {"replicas": 2}}})[
        "metadata"]["generation"]
    wait_until(lambda: api.get(cluster.pm(ns, "m"))["status"].get("observedGeneration")
               == generation, what="the edit reconciled")
    assert api.find(cluster.path(ns, "jobs", "m-train-v3")) is None


def test_a_damaged_id_list_stops_every_training_job(cluster: Cluster) -> None:
    api, ns = cluster.api, cluster.namespace()
    api.create(cluster.pb(ns), budget_body("b"))
    api.create(cluster.pm(ns), _dpsgd_model("m", "b"))
    api.create(_er(cluster, ns), _request("later", "m", ["r-1", "r-2"], "NextRetrain"))
    wait_until(lambda: _phase(cluster, ns, "later") == "Scheduled", what="Scheduled")
    wait_until(lambda: (api.get(cluster.pm(ns, "m"))["status"].get("erasure") or {}).get(
        "listed") == 2, what="the model read the list")
    cm = api.get(cluster.path(ns, "configmaps", "m-erasure"))
    # Edited by hand: the ids reordered (an open request's own entry is kept, so re-listing
    # it does not repair the list).
    cm["data"]["ids.json"] = json.dumps(["r-2", "r-1"])
    api.replace(cluster.path(ns, "configmaps", "m-erasure"), cm)
    api.create(_er(cluster, ns), _request("now", "m", ["r-9"], "Immediate"))

    def refused() -> dict[str, Any] | None:
        retraining = condition(api.get(cluster.pm(ns, "m")), "Retraining") or {}
        return retraining if retraining.get("reason") == "ErasureListDamaged" else None

    found = wait_until(refused, what=lambda: "Retraining=False ErasureListDamaged: "
                       f"{api.get(cluster.pm(ns, 'm'))['status']}")
    assert "no training Job starts until it is restored" in found["message"]
    assert api.find(cluster.path(ns, "jobs", "m-train-v2")) is None


def test_a_model_without_retraining_cannot_be_erased_from(cluster: Cluster) -> None:
    api, ns = cluster.api, cluster.namespace()
    api.create(cluster.pb(ns), budget_body("b"))
    api.create(cluster.pm(ns), model_body("m", "b"))
    api.create(_er(cluster, ns), _request("r", "m", ["r-1"], "Immediate"))
    wait_until(lambda: _phase(cluster, ns, "r") == "Failed", what="Failed")
    status = api.get(_er(cluster, ns, "r"))["status"]
    complete = next(c for c in status["conditions"] if c["type"] == "Complete")
    assert complete["reason"] == "NotErasable" and "spec.retraining" in complete["message"]
    assert api.find(cluster.path(ns, "configmaps", "m-erasure")) is None
    # The spec is immutable: the API server evaluates the CRD's CEL transition rule and
    # refuses the edit (the operator's SpecEditRefused condition, for a server that did not,
    # is tested on the pure decision in tests/controllers/test_erasurestate.py).
    api.create(cluster.pm(ns), _dpsgd_model("d", "b"))
    api.create(_er(cluster, ns), _request("s", "d", ["r-1"], "NextRetrain"))
    wait_until(lambda: _phase(cluster, ns, "s") == "Scheduled", what="Scheduled")
    request = api.get(_er(cluster, ns, "s"))
    request["spec"]["recordIds"] = ["r-2"]
    with pytest.raises(ApiFailure) as refused:
        api.replace(_er(cluster, ns, "s"), request)
    assert refused.value.status == 422 and "spec is immutable" in str(refused.value)
    assert api.get(_er(cluster, ns, "s"))["spec"]["recordIds"] == ["r-1"]
    cm = api.get(cluster.path(ns, "configmaps", "d-erasure"))
    assert json.loads(cm["data"]["ids.json"]) == ["r-1"]

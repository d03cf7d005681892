"""Edits of spec.budgetRef and spec.model with the real operator on LocalKube: followed until
the model spends, then a new version is rolled out and the rest refused: at admission by the
CRD's transition rules (LocalKube evaluates them, as an API server does), and, where a cluster
let such an edit through (a CRD older than the operator: fed here with ``store.force``), by
the operator with a condition and an Event. Budgets a model's versions spent stay protected."""

from __future__ import annotations

from typing import Any

from operator_support import Cluster, budget_body, condition, model_body, wait_until

from dpserve_testkit.localkube.client import ApiFailure

Obj = dict[str, Any]
TRAINING = {"noiseMultiplier": "1.1", "sampleRate": "0.01", "steps": 100}


def _trained_model(name: str, budget: str) -> Obj:
    """Mechanism none: its declared training is charged on the first reconcile."""
    body = model_body(name, budget, mechanism={"type": "none"})
    body["spec"]["model"] = {"artifact": f"pvc://models/{name}/v1", "format": "state-dict",
                             "training": TRAINING}
    return body


def _get(cluster: Cluster, ns: str, name: str, check: Any, what: str) -> Obj:
    return wait_until(lambda: (m := cluster.api.get(cluster.pm(ns, name))) and check(m) and m,
                      what=what)


def _reconciled(m: Obj) -> bool:
    status = m.get("status") or {}
    return bool(status.get("observedGeneration") == m["metadata"]["generation"])


def _refused_then_forced(cluster: Cluster, ns: str, name: str, patch: Obj, message: str) -> None:
    """The edit is refused at admission (422, the rule's message); then it is stored past
    validation, as a cluster with an older CRD would have, for the operator to judge."""
    try:
        cluster.api.merge(cluster.pm(ns, name), patch)
    except ApiFailure as failure:
        assert failure.status == 422 and message in str(failure.body.get("message")), failure
    else:
        raise AssertionError(f"the API server admitted {patch}")
    current = cluster.api.get(cluster.pm(ns, name))
    edited = _merged(current, patch)
    edited["metadata"] = {k: v for k, v in current["metadata"].items()
                          if k not in ("resourceVersion", "managedFields")}
    cluster.server.call(lambda kube: kube.store.force(
        kube.kind("dpserve.io/v1alpha1", "privatemodels"), edited))


def _merged(base: Any, patch: Any) -> Any:
    if not isinstance(base, dict) or not isinstance(patch, dict):
        return patch
    out = dict(base)
    for key, value in patch.items():
        out[key] = _merged(base.get(key), value)
    return out


def _ledger(cluster: Cluster, ns: str, budget: str) -> list[tuple[str, str]]:
    status = cluster.api.get(cluster.pb(ns, budget)).get("status") or {}
    return sorted((e["kind"], e["modelVersion"]) for e in status.get("ledger") or [])


def test_budget_ref_typo_is_fixed_before_the_model_spends(cluster: Cluster) -> None:
    api, ns = cluster.api, cluster.namespace()
    api.create(cluster.pb(ns), budget_body("b"))
    api.create(cluster.pm(ns), _trained_model("m", "bb"))  # the typo
    waiting = _get(cluster, ns, "m", lambda m: (condition(m, "BudgetAvailable") or {}).get(
        "reason") == "BudgetNotFound", "BudgetNotFound")
    assert waiting["status"]["accepted"]["spent"] is False
    api.merge(cluster.pm(ns, "m"), {"spec": {"budgetRef": {"name": "b"}}})
    serving = _get(cluster, ns, "m", lambda m: _reconciled(m) and m["status"].get("phase") ==
                   "Serving", "serving from the fixed budget")
    assert serving["status"]["budget"] == "b"
    assert serving["status"]["accepted"] == {"budgetRef": "b", "artifact": "pvc://models/m/v1",
                                             "version": "v1", "training": {
                                                 **TRAINING, "sampling": "poisson"},
                                             "spent": True}
    assert _ledger(cluster, ns, "b") == [("training", "v1")]
    event = cluster.wait_event(ns, "m", "SpecEditApplied")
    assert "spec.budgetRef.name" in event["message"]


def test_budget_ref_edit_after_spending_is_refused_and_surfaced(cluster: Cluster) -> None:
    api, ns = cluster.api, cluster.namespace()
    api.create(cluster.pb(ns), budget_body("b"))
    api.create(cluster.pb(ns), budget_body("b2"))
    api.create(cluster.pm(ns), _trained_model("m", "b"))
    _get(cluster, ns, "m", lambda m: (m.get("status") or {}).get("accepted", {}).get("spent")
         and m["status"].get("phase") == "Serving", "spent and serving")
    _refused_then_forced(cluster, ns, "m", {"spec": {"budgetRef": {"name": "b2"}}},
                         "spec.budgetRef.name cannot change once the model has spent")
    refused = _get(cluster, ns, "m", lambda m: _reconciled(m) and (
        condition(m, "Ready") or {}).get("reason") == "SpecEditRefused", "SpecEditRefused")
    ready, stalled = condition(refused, "Ready"), condition(refused, "Stalled")
    assert ready is not None and stalled is not None
    assert ready["status"] == "False" and stalled["status"] == "True"
    assert ready["message"].startswith("spec.budgetRef.name: cannot change from b to b2")
    assert refused["status"]["budget"] == "b"
    assert api.get(cluster.path(ns, "deployments", "m"))["spec"]["replicas"] == 1  # serves on
    assert _ledger(cluster, ns, "b2") == []
    event = cluster.wait_event(ns, "m", "SpecEditRefused")
    assert event["type"] == "Warning" and "spec.budgetRef.name" in event["message"]

    # Reverted (forced too: the rule compares with the stored b2, so the API refuses
    # even the way back).
    edited = _merged(api.get(cluster.pm(ns, "m")), {"spec": {"budgetRef": {"name": "b"}}})
    edited["metadata"].pop("resourceVersion", None)
    cluster.server.call(lambda kube: kube.store.force(
        kube.kind("dpserve.io/v1alpha1", "privatemodels"), edited))
    back = _get(cluster, ns, "m", lambda m: _reconciled(m) and (
        condition(m, "Ready") or {}).get("status") == "True", "Ready again")
    assert (condition(back, "Stalled") or {}).get("status") == "False"


def test_new_artifact_is_a_new_version_rolled_out_on_the_budget(cluster: Cluster) -> None:
    api, ns = cluster.api, cluster.namespace()
    api.create(cluster.pb(ns), budget_body("b"))
    api.create(cluster.pm(ns), _trained_model("m", "b"))
    _get(cluster, ns, "m", lambda m: (m.get("status") or {}).get("accepted", {}).get("spent")
         and m["status"].get("phase") == "Serving", "spent and serving")

    # A new artifact under the version already charged: refused, v1 still served.
    _refused_then_forced(cluster, ns, "m", {"spec": {"model": {"artifact": "pvc://models/m/v2"}}},
                         "change only with a new spec.model.version")
    refused = _get(cluster, ns, "m", lambda m: _reconciled(m) and (
        condition(m, "Ready") or {}).get("reason") == "SpecEditRefused", "SpecEditRefused")
    assert "spec.model.artifact" in (condition(refused, "Ready") or {})["message"]
    assert refused["status"]["artifact"] == "pvc://models/m/v1"

    # ... as a new version with its own training: rolled out, charged, v1 kept.
    api.merge(cluster.pm(ns, "m"), {"spec": {"model": {
        "version": "v2", "training": {**TRAINING, "steps": 200}}}})
    rolled = _get(cluster, ns, "m", lambda m: _reconciled(m) and m["status"].get(
        "modelVersion") == "v2" and (condition(m, "Ready") or {}).get("status") == "True",
        "v2 served")
    status = rolled["status"]
    assert status["artifact"] == "pvc://models/m/v2" and status["budget"] == "b"
    assert [(v["version"], v["budget"], v["artifact"]) for v in status["versions"]] == [
        ("v1", "b", "pvc://models/m/v1")]
    assert _ledger(cluster, ns, "b") == [("training", "v1"), ("training", "v2")]
    # Each budget counted once in the lifetime ε: the budget's own spend.
    budget = api.get(cluster.pb(ns, "b"))
    assert status["lifetimeEpsilon"] == budget["status"]["epsilonSpent"]
    deployment = api.get(cluster.path(ns, "deployments", "m"))
    assert "v2" in str(deployment["spec"]["template"])
    assert "v2" in cluster.wait_event(ns, "m", "VersionRolledOut")["message"]

    # Going back to a version already served is refused.
    _refused_then_forced(cluster, ns, "m", {"spec": {"model": {
        "version": "v1", "artifact": "pvc://models/m/v1", "training": TRAINING}}},
        "must name a version this model has not served yet")
    back = _get(cluster, ns, "m", lambda m: _reconciled(m) and (
        condition(m, "Ready") or {}).get("reason") == "SpecEditRefused", "refused")
    assert "spec.model.version: v1 was already served" in (condition(back, "Ready") or {})[
        "message"]
    assert back["status"]["modelVersion"] == "v2"


def test_budget_of_a_retired_version_is_deletion_protected(cluster: Cluster) -> None:
    api, ns = cluster.api, cluster.namespace()
    api.create(cluster.pb(ns), budget_body("old"))
    api.create(cluster.pb(ns), budget_body("b"))
    api.create(cluster.pm(ns), model_body("m", "b"))
    model = _get(cluster, ns, "m", lambda m: (m.get("status") or {}).get("phase") == "Serving",
                 "serving")
    wait_until(lambda: "dpserve.io/budget-protection" in (
        api.get(cluster.pb(ns, "old"))["metadata"].get("finalizers") or []),
        what="old protected")
    # v0 was served from budget "old" (as after a retrain onto b): its spend is part of the
    # model's lifetime ε.
    status = {**model["status"], "versions": [
        {"version": "v0", "budget": "old", "artifact": "pvc://models/m/v0",
         "epsilonSpent": "0"}]}
    api.replace(cluster.pm(ns, "m") + "/status", {**model, "status": status})
    api.delete(cluster.pb(ns, "old"))
    message = cluster.wait_event(ns, "old", "DeletionBlocked")["message"]
    assert "in use by PrivateModel m" in message
    assert api.get(cluster.pb(ns, "old"))["metadata"]["deletionTimestamp"]
    api.delete(cluster.pm(ns, "m"))
    wait_until(lambda: api.find(cluster.pb(ns, "old")) is None, what="old released")


def test_edit_ignored_by_an_older_operator_is_followed_after_upgrade(cluster: Cluster) -> None:
    """A status without status.accepted (written before it existed) whose spec was edited
    meanwhile: the edit is judged against what was served, not silently adopted."""
    api, ns = cluster.api, cluster.namespace()
    api.create(cluster.pb(ns), budget_body("b"))
    api.create(cluster.pm(ns), _trained_model("m", "bb"))
    waiting = _get(cluster, ns, "m", lambda m: (condition(m, "BudgetAvailable") or {}).get(
        "reason") == "BudgetNotFound", "BudgetNotFound")
    old = {**waiting, "spec": {**waiting["spec"], "budgetRef": {"name": "b"}},
           "status": {k: v for k, v in waiting["status"].items() if k != "accepted"}}
    old["metadata"] = {k: v for k, v in waiting["metadata"].items()
                       if k not in ("resourceVersion", "managedFields")}
    cluster.server.call(lambda kube: kube.store.force(
        kube.kind("dpserve.io/v1alpha1", "privatemodels"), old))
    serving = _get(cluster, ns, "m", lambda m: _reconciled(m) and m["status"].get("phase") ==
                   "Serving", "serving from the edited budget")
    assert serving["status"]["budget"] == "b"
    assert serving["status"]["accepted"]["budgetRef"] == "b"
    assert "spec.budgetRef.name" in cluster.wait_event(ns, "m", "SpecEditApplied")["message"]

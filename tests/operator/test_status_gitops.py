"""GitOps health: the statuses the real operator writes on LocalKube, judged by the Argo CD
health checks shipped in charts/dpserve/health (run in Lua 5.1, as Argo CD's gopher-lua)
and by the kstatus conventions Flux reads (observedGeneration, Reconciling, Stalled)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import celpy
import pytest
import yaml
from celpy.adapter import json_to_cel
from celpy.evaluation import CELEvalError
from lupa import lua51
from operator_support import Cluster, budget_body, condition, model_body, wait_until

HEALTH = Path(__file__).resolve().parents[2] / "charts" / "dpserve" / "health"
Obj = dict[str, Any]


def argocd_health(kind: str, obj: Obj) -> tuple[str, str]:
    """(status, message) of Argo CD's health check for ``obj``: the script runs with the
    object as the global ``obj`` and returns a table, as in argocd-cm."""
    script = (HEALTH / f"{kind.lower()}.lua").read_text(encoding="utf-8")
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(copy.deepcopy(obj), recursive=True)
    result = lua.execute(script)
    assert result is not None, "the health script returned nothing"
    return str(result["status"]), str(result["message"] or "")


def flux_budget_health(obj: Obj) -> str:
    """Flux's verdict with the shipped healthCheckExprs: inProgress, failed, current, in
    that order; InProgress when none holds. Top-level fields are the CEL variables."""
    (check,) = yaml.safe_load((HEALTH / "flux-healthcheckexprs.yaml").read_text("utf-8"))
    env = celpy.Environment()
    activation = {k: json_to_cel(v) for k, v in obj.items()}
    for key, verdict in (("inProgress", "InProgress"), ("failed", "Failed"),
                         ("current", "Current")):
        result = env.program(env.compile(check[key])).evaluate(activation)
        if isinstance(result, CELEvalError):
            raise AssertionError(f"{key}: {result}")
        if bool(result):
            return verdict
    return "InProgress"


def kstatus(obj: Obj) -> str:
    """kstatus' verdict for a custom resource (sigs.k8s.io/cli-utils, generic rules):
    Terminating, then observedGeneration, then Reconciling / Stalled, else Current."""
    meta, status = obj["metadata"], obj.get("status") or {}
    if meta.get("deletionTimestamp"):
        return "Terminating"
    if status.get("observedGeneration") != meta.get("generation"):
        return "InProgress"
    if (condition(obj, "Reconciling") or {}).get("status") == "True":
        return "InProgress"
    if (condition(obj, "Stalled") or {}).get("status") == "True":
        return "Failed"
    return "Current"


def _model(cluster: Cluster, ns: str, name: str, check: Any, what: str) -> Obj:
    return wait_until(lambda: (m := cluster.api.get(cluster.pm(ns, name))) and check(m) and m,
                      what=what)


def test_serving_model_and_its_budget_are_healthy(cluster: Cluster) -> None:
    api, ns = cluster.api, cluster.namespace()
    api.create(cluster.pb(ns), budget_body("b"))
    api.create(cluster.pm(ns), model_body("m", "b"))
    serving = _model(cluster, ns, "m", lambda m: (m.get("status") or {}).get("phase") ==
                     "Serving", "phase Serving")
    assert kstatus(serving) == "Current"
    health, message = argocd_health("PrivateModel", serving)
    assert health == "Healthy" and "Serving v1 from budget b" in message
    budget = wait_until(lambda: (b := api.get(cluster.pb(ns, "b"))).get("status") and b,
                        what="budget status")
    assert kstatus(budget) == "Current"
    assert argocd_health("PrivacyBudget", budget)[0] == "Healthy"
    assert flux_budget_health(budget) == "Current"

    # A spec edit the operator has not observed yet: in progress for both tools.
    edited = api.merge(cluster.pm(ns, "m"), {"spec": {"serving": {"replicas": 2}}})
    if edited["status"]["observedGeneration"] != edited["metadata"]["generation"]:
        assert kstatus(edited) == "InProgress"
        assert argocd_health("PrivateModel", edited)[0] == "Progressing"
    stale = copy.deepcopy(serving)
    stale["metadata"]["generation"] += 1
    assert kstatus(stale) == "InProgress"
    assert argocd_health("PrivateModel", stale) == (
        "Progressing", f"Waiting for the operator to observe generation "
        f"{stale['metadata']['generation']}")
    # Scaled to zero by the spec: suspended, not broken.
    api.merge(cluster.pm(ns, "m"), {"spec": {"serving": {"replicas": 0}}})
    zero = _model(cluster, ns, "m", lambda m: m["status"]["observedGeneration"] ==
                  m["metadata"]["generation"] and m["status"]["replicas"] == 0, "scaled to 0")
    assert kstatus(zero) == "Current"
    assert argocd_health("PrivateModel", zero)[0] == "Suspended"


def test_model_waiting_for_its_budget_is_progressing(cluster: Cluster) -> None:
    """GitOps may apply the model before its budget: progressing, not failed."""
    api, ns = cluster.api, cluster.namespace()
    api.create(cluster.pm(ns), model_body("m", "later"))
    waiting = _model(cluster, ns, "m", lambda m: (condition(m, "Reconciling") or {}).get(
        "reason") == "BudgetNotFound", "Reconciling BudgetNotFound")
    assert kstatus(waiting) == "InProgress"
    health, message = argocd_health("PrivateModel", waiting)
    assert health == "Progressing" and "PrivacyBudget later does not exist" in message
    api.create(cluster.pb(ns), budget_body("later"))
    serving = _model(cluster, ns, "m", lambda m: m["status"].get("phase") == "Serving",
                     "phase Serving")
    assert argocd_health("PrivateModel", serving)[0] == "Healthy"


def test_exhausted_budget_degrades_the_model_and_suspends_the_budget(cluster: Cluster) -> None:
    api, ns = cluster.api, cluster.namespace()
    # One gaussian query (σ = 1) costs far more than ε = 0.001: exhausted from the start.
    # The model first, so that the budget's first reconcile probes its mechanism.
    api.create(cluster.pm(ns), model_body("m", "tiny"))
    api.create(cluster.pb(ns), budget_body("tiny", epsilon="0.001"))
    exhausted = _model(cluster, ns, "m", lambda m: (m.get("status") or {}).get("phase") ==
                       "BudgetExhausted" and (condition(m, "Stalled") or {}).get("status") ==
                       "True", "phase BudgetExhausted, Stalled")
    assert kstatus(exhausted) == "Failed"
    health, message = argocd_health("PrivateModel", exhausted)
    assert health == "Degraded"
    assert message.startswith("BudgetExhausted: PrivacyBudget tiny cannot pay one more")
    budget = wait_until(lambda: (b := api.get(cluster.pb(ns, "tiny"))) and (
        condition(b, "Exhausted") or {}).get("status") == "True" and b,
        what="budget Exhausted")
    health, message = argocd_health("PrivacyBudget", budget)
    assert health == "Suspended" and message.startswith("Exhausted: ")
    assert kstatus(budget) == "Current"  # kstatus alone: the model carries the failure
    assert flux_budget_health(budget) == "Failed"
    # Raising ε resumes serving: healthy again in both tools.
    api.merge(cluster.pb(ns, "tiny"), {"spec": {"epsilon": "1000"}})
    serving = _model(cluster, ns, "m", lambda m: m["status"].get("phase") == "Serving",
                     "serving again")
    assert kstatus(serving) == "Current"
    assert argocd_health("PrivateModel", serving)[0] == "Healthy"


def test_a_model_bound_after_the_budget_reconciled_is_probed(cluster: Cluster) -> None:
    # The budget reconciles with no model bound (nothing to probe: not Exhausted); a model
    # created afterwards cannot pay one query, and the budget must say so without waiting
    # for an edit of its own (the two watches are not ordered in a real cluster either).
    api, ns = cluster.api, cluster.namespace()
    api.create(cluster.pb(ns), budget_body("later", epsilon="0.001"))
    wait_until(lambda: (b := api.get(cluster.pb(ns, "later"))) and (
        condition(b, "Exhausted") or {}).get("status") == "False", what="budget not Exhausted")
    api.create(cluster.pm(ns), model_body("m", "later"))
    budget = wait_until(lambda: (b := api.get(cluster.pb(ns, "later"))) and (
        condition(b, "Exhausted") or {}).get("status") == "True" and b,
        what="budget Exhausted once the model is bound")
    assert "not one more query" in (condition(budget, "Exhausted") or {}).get("message", "")


def test_invalid_objects_are_degraded(cluster: Cluster) -> None:
    api, ns = cluster.api, cluster.namespace()
    api.create(cluster.pb(ns), budget_body("b"))
    bad = model_body("bad", "b")
    bad["metadata"]["namespace"] = ns
    bad["spec"]["serving"]["replicas"] = -3  # the CRD forbids it; written around admission
    cluster.server.call(lambda kube: kube.store.force(
        kube.kind("dpserve.io/v1alpha1", "privatemodels"), bad))
    failed = _model(cluster, ns, "bad", lambda m: (m.get("status") or {}).get("phase") ==
                    "Failed", "phase Failed")
    assert (condition(failed, "Stalled") or {}).get("reason") == "InvalidSpec"
    assert kstatus(failed) == "Failed"
    health, message = argocd_health("PrivateModel", failed)
    assert health == "Degraded" and message.startswith("InvalidSpec: ")
    assert "spec.serving.replicas" in message

    broken = budget_body("broken")
    broken["metadata"]["namespace"] = ns
    broken["spec"]["delta"] = "2"  # δ >= 1: refused by the CRD's CEL rule
    cluster.server.call(lambda kube: kube.store.force(
        kube.kind("dpserve.io/v1alpha1", "privacybudgets"), broken))
    budget = wait_until(lambda: (b := api.get(cluster.pb(ns, "broken"))) and (
        condition(b, "Ready") or {}).get("reason") == "InvalidSpec" and b,
        what="budget InvalidSpec")
    health, message = argocd_health("PrivacyBudget", budget)
    assert health == "Degraded" and message.startswith("InvalidSpec: ")
    assert flux_budget_health(budget) == "Failed"
    stale = copy.deepcopy(budget)
    stale["metadata"]["generation"] += 1
    assert flux_budget_health(stale) == "InProgress"
    assert argocd_health("PrivacyBudget", stale)[0] == "Progressing"


@pytest.mark.parametrize("kind", ["PrivateModel", "PrivacyBudget"])
def test_object_without_status_is_progressing(kind: str) -> None:
    obj = {"apiVersion": "dpserve.io/v1alpha1", "kind": kind,
           "metadata": {"name": "x", "generation": 1}, "spec": {"epsilon": "1"}}
    assert argocd_health(kind, obj)[0] == "Progressing"

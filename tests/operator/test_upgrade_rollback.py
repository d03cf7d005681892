"""Upgrade: CRDs (and statuses) newer than the operator (issue 12, item 4).

The operator never resets a PrivateModel status it cannot fully read: fields it does not
know are written back, an unreadable status is kept and surfaced (StatusUnreadable).
The rollback direction is in test_rollback.py (its own operator process: what an older CRD
prunes is remembered per process).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from operator_support import Cluster, budget_body, condition, model_body, wait_until

CRD = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/privatemodels.dpserve.io"


def _edit_crd(cluster: Cluster, edit: Callable[[dict[str, Any]], None]) -> None:
    crd = copy.deepcopy(cluster.api.get(CRD))
    edit(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"])
    cluster.api.replace(CRD, crd)


def _newer(status_schema: dict[str, Any]) -> None:
    """A later release: a new status field, a new field per version, a new phase."""
    props = status_schema["properties"]
    props["futureField"] = {"type": "string"}
    props["versions"]["items"]["properties"]["baseVersion"] = {"type": "string"}
    if "Draining" not in props["phase"]["enum"]:
        props["phase"]["enum"] = [*props["phase"]["enum"], "Draining"]


def _ready(cluster: Cluster, ns: str) -> Any:
    api = cluster.api
    api.create(cluster.pb(ns), budget_body("b"))
    api.create(cluster.pm(ns), model_body("m", "b"))
    return wait_until(lambda: (m := api.get(cluster.pm(ns, "m")))
                      and (condition(m, "Ready") or {}).get("status") == "True" and m,
                      what="m Ready")


def _reconciled(cluster: Cluster, ns: str, generation: int) -> dict[str, Any]:
    return wait_until(
        lambda: (m := cluster.api.get(cluster.pm(ns, "m")))
        and m["status"].get("observedGeneration") == generation and m,
        what=f"observedGeneration {generation}")


RETIRED = {"version": "v1", "budget": "old", "artifact": "pvc://models/m/v0",
           "epsilonSpent": "2.5", "baseVersion": "v0"}


def test_crd_newer_than_operator_keeps_unknown_status_fields(cluster: Cluster) -> None:
    api, ns = cluster.api, cluster.namespace()
    _edit_crd(cluster, _newer)
    _ready(cluster, ns)
    # What a newer operator wrote: fields this one does not know, in and around versions.
    api.merge(cluster.pm(ns, "m") + "/status", {"status": {
        "futureField": "kept", "versions": [RETIRED]}})
    api.merge(cluster.pm(ns, "m"), {"spec": {"serving": {"replicas": 2}}})
    status = _reconciled(cluster, ns, 2)["status"]
    assert status["futureField"] == "kept"
    assert status["versions"] == [RETIRED]
    assert float(status["lifetimeEpsilon"]) >= 2.5  # the retired budget still counts
    assert (condition({"status": status}, "Ready") or {}).get("reason") != "StatusUnreadable"


def test_unreadable_status_is_kept_and_surfaced_not_reset(cluster: Cluster) -> None:
    api, ns = cluster.api, cluster.namespace()
    _edit_crd(cluster, _newer)
    _ready(cluster, ns)
    api.merge(cluster.pm(ns, "m") + "/status", {"status": {
        "phase": "Draining", "versions": [RETIRED]}})
    api.merge(cluster.pm(ns, "m"), {"spec": {"serving": {"replicas": 2}}})
    stuck = wait_until(
        lambda: (m := api.get(cluster.pm(ns, "m")))
        and (condition(m, "Ready") or {}).get("reason") == "StatusUnreadable" and m,
        what="Ready=False StatusUnreadable")
    assert stuck["status"]["phase"] == "Draining"
    assert stuck["status"]["versions"] == [RETIRED]
    assert "status.phase" in (condition(stuck, "Ready") or {})["message"]
    # Fail closed: the spec edit is not applied while the status cannot be read.
    assert api.get(cluster.path(ns, "deployments", "m"))["spec"]["replicas"] == 1
    assert cluster.wait_event(ns, "m", "StatusUnreadable")["type"] == "Warning"

    # Fixed by hand (or by the newer operator coming back): reconciling resumes, keeping it.
    api.merge(cluster.pm(ns, "m") + "/status", {"status": {"phase": "Serving"}})
    api.merge(cluster.pm(ns, "m"), {"spec": {"serving": {"replicas": 3}}})
    wait_until(lambda: api.get(cluster.path(ns, "deployments", "m"))["spec"]["replicas"] == 3,
               what="spec applied once the status is readable")
    assert api.get(cluster.pm(ns, "m"))["status"]["versions"] == [RETIRED]

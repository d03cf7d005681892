"""Rollback: a CRD older than the operator (issue 12, item 4).

The API server prunes the status fields the old schema lacks; the operator reports them
once (Warning Event StatusFieldsPruned) and stops rewriting them instead of writing the
status again on every watch event.
"""

from __future__ import annotations

import copy

from operator_support import Cluster, budget_body, model_body, wait_until

CRD = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/privatemodels.dpserve.io"


def test_crd_older_than_operator_reports_pruned_fields_without_a_write_loop(
    cluster: Cluster,
) -> None:
    api, ns = cluster.api, cluster.namespace()

    crd = copy.deepcopy(api.get(CRD))
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    del schema["properties"]["status"]["properties"]["endpoint"]
    api.replace(CRD, crd)
    api.create(cluster.pb(ns), budget_body("b"))
    api.create(cluster.pm(ns), model_body("m", "b"))
    wait_until(lambda: any(e["reason"] == "StatusFieldsPruned" and e["type"] == "Warning"
                           and "status.endpoint" in e["message"]
                           for e in cluster.events(ns, "m")),
               what="StatusFieldsPruned event")
    api.merge(cluster.pm(ns, "m"), {"spec": {"serving": {"replicas": 2}}})
    model = wait_until(
        lambda: (m := api.get(cluster.pm(ns, "m")))
        and m["status"].get("observedGeneration") == 2 and m, what="observedGeneration 2")
    assert "endpoint" not in model["status"]
    path = cluster.pm(ns, "m") + "/status"
    writes = cluster.server.call(
        lambda kube: sum(1 for w in kube.writes if w.path == path))
    # A handful of status writes (create, Ready, the edit), not one per watch event forever.
    assert writes < 12, writes

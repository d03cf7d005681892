"""A file:// artifact (a hostPath of any node directory) is refused by an operator that was
not told to allow host paths: Ready=False InvalidSpec naming the field, an Event, and no
Deployment — the chart's admission policy refuses it earlier on a real cluster."""

from __future__ import annotations

from operator_support import Cluster, budget_body, condition, model_body, wait_until


def test_a_host_path_artifact_is_never_mounted(cluster: Cluster) -> None:
    api, ns = cluster.api, cluster.namespace()
    api.create(cluster.pb(ns), budget_body("b"))
    body = model_body("m", "b")
    body["spec"]["model"]["artifact"] = "file:///etc"
    api.create(cluster.pm(ns), body)
    failed = wait_until(
        lambda: (m := api.get(cluster.pm(ns, "m"))).get("status", {}).get("phase") == "Failed"
        and m, what="phase Failed")
    ready = condition(failed, "Ready")
    assert ready is not None and ready["reason"] == "InvalidSpec"
    assert ready["message"].startswith("spec.model.artifact: 'file:///etc': file:// URIs")
    cluster.wait_event(ns, "m", "InvalidSpec")
    assert api.items(cluster.path(ns, "deployments")) == []

"""Text models with the real operator process on LocalKube: a tenant-side embedder is never
charged to the dataset's ledger (refused until its budget has partitions), and a huggingface
model's pod carries the text flags."""

from __future__ import annotations

import json
from typing import Any

from operator_support import Cluster, budget_body, condition, wait_until

LAPLACE = {"type": "laplace-embedding", "epsilon": "0.5"}


def embedder_body(name: str, budget: str) -> dict[str, Any]:
    return {
        "apiVersion": "dpserve.io/v1alpha1", "kind": "PrivateModel",
        "metadata": {"name": name},
        "spec": {
            "budgetRef": {"name": budget},
            "model": {"artifact": f"pvc://models/{name}/v1", "format": "huggingface",
                      "task": "feature-extraction"},
            "serving": {"replicas": 1, "mechanism": LAPLACE},
            "confidential": {"profile": "none", "required": False},
            "outputFilter": {"verbatimGuard": {"enabled": False}},
        },
    }


def test_tenant_side_embedder_waits_for_partitions(cluster: Cluster) -> None:
    api, ns = cluster.api, cluster.namespace()
    api.create(cluster.pb(ns), budget_body("b"))
    api.create(cluster.pm(ns), embedder_body("e", "b"))
    failed = wait_until(
        lambda: (m := api.get(cluster.pm(ns, "e"))).get("status", {}).get("phase") == "Failed"
        and m, what="phase Failed")
    ready = condition(failed, "Ready")
    assert ready is not None and ready["reason"] == "InvalidSpec"
    assert "never to the dataset's ledger" in ready["message"]
    assert api.find(cluster.path(ns, "deployments", "e")) is None  # nothing serves

    # Partitions on the budget: the model is rendered, its sidecar names the tenant.
    api.merge(cluster.pb(ns, "b"), {"spec": {"partitions": {"header": "X-Tenant",
                                                            "epsilon": "5"}}})
    deployment = wait_until(lambda: api.find(cluster.path(ns, "deployments", "e")),
                            what="Deployment after partitions were added")
    configmap = api.get(cluster.path(ns, "configmaps", "e-filter"))
    config = json.loads(configmap["data"]["filter.json"])
    assert config["partitionHeader"] == "X-Tenant"
    assert config["task"] == "feature-extraction" and config["servedModelName"] == "e"
    model = next(c for c in deployment["spec"]["template"]["spec"]["containers"]
                 if c["name"] == "model")
    assert model["args"][-2:] == ["--task", "feature-extraction"]

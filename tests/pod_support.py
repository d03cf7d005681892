"""Serving pods as the API server holds them, for tests that lease without a kubelet.

The ledger grants only to a serving pod of the model (``dpserve.ledger.podcheck``): the bound
token's pod must exist, carry the model's labels and be controlled by the model's Deployment.
"""

from __future__ import annotations

from typing import Any

from dpserve.resources.labels import selector_labels
from dpserve.resources.names import deployment_name
from dpserve_testkit.memory_store import MemoryStore

_API_VERSIONS = {"PrivateModel": "dpserve.io/v1alpha1", "Deployment": "apps/v1",
                 "ReplicaSet": "apps/v1"}


def owner_ref(kind: str, meta: dict[str, Any]) -> dict[str, Any]:
    """A controller ownerReference to the object of ``meta``."""
    return {"apiVersion": _API_VERSIONS[kind], "kind": kind, "name": meta["name"],
            "uid": meta["uid"], "controller": True}


def kube_serving_pod(k: Any, model: str, pod: str, *, namespace: str,
                     ip: str | None = None) -> str:
    """In a LocalKube emulator ``k``: ``model``'s Deployment (controlled by the PrivateModel)
    and a pod of it, owned as LocalKube's kubelet owns it (no ReplicaSet); the pod's uid."""
    owner = k.store.get(k.kind("dpserve.io/v1alpha1", "privatemodels"), namespace, model)
    deployments = k.kind("apps/v1", "deployments")
    dep_name = deployment_name(model)
    deployment = k.store.find(deployments, namespace, dep_name)  # the operator's, if running
    if deployment is None:
        labels = selector_labels(model, "inference")
        deployment = k.store.create(deployments, namespace, {
            "metadata": {"name": dep_name, "ownerReferences": [owner_ref("PrivateModel",
                                                                    owner["metadata"])]},
            "spec": {"selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "m", "image": "x"}]}}},
        })
    body: dict[str, Any] = {
        "metadata": {"name": pod, "labels": selector_labels(model, "inference"),
                     "ownerReferences": [owner_ref("Deployment", deployment["metadata"])]},
        "spec": {"containers": [{"name": "m", "image": "x"}]},
        "status": {"phase": "Running", **({"podIP": ip, "podIPs": [{"ip": ip}]} if ip else {})},
    }
    pods = k.kind("v1", "pods")
    existing = k.store.find(pods, namespace, pod)
    created = existing if existing is not None else k.store.create(pods, namespace, body)
    return str(created["metadata"]["uid"])


def add_serving_pod(
    store: MemoryStore, model: str, pod: str, *, namespace: str, ip: str | None = None,
    via_replica_set: bool = True,
) -> dict[str, Any]:
    """A serving pod of ``model`` as the API server holds it: its Deployment (controlled by
    the PrivateModel), a ReplicaSet between them (unless ``via_replica_set`` is False, as in
    LocalKube), the pod's labels and, when given, its IP."""
    owner = store.objects[("privatemodels", namespace, model)]["metadata"]
    dep_name = deployment_name(model)
    deployment = store.objects.get(("deployments", namespace, dep_name)) or store.put_raw(
        "deployments", {"metadata": {"name": dep_name, "namespace": namespace,
                                     "ownerReferences": [owner_ref("PrivateModel", owner)]}})
    controller = deployment["metadata"]
    if via_replica_set:
        rs_name = f"{dep_name}-5d8f7c"
        replica_set = store.objects.get(("replicasets", namespace, rs_name)) or store.put_raw(
            "replicasets", {"metadata": {"name": rs_name, "namespace": namespace,
                                         "ownerReferences": [owner_ref("Deployment",
                                                                       controller)]}})
        controller = replica_set["metadata"]
    kind = "ReplicaSet" if via_replica_set else "Deployment"
    status: dict[str, Any] = {"phase": "Running"}
    if ip is not None:
        status.update(podIP=ip, podIPs=[{"ip": ip}])
    return store.put_raw("pods", {
        "metadata": {"name": pod, "namespace": namespace,
                     "labels": selector_labels(model, "inference"),
                     "ownerReferences": [owner_ref(kind, controller)]},
        "status": status,
    })

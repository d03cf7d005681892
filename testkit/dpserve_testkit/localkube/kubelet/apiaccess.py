"""The API access a pod gets by default: the ServiceAccount admission plugin's projected
``kube-api-access`` volume, and how the process runtime hands it to a process.

An API server adds the volume (a ServiceAccount token, and the namespace) to every pod whose
``automountServiceAccountToken`` (the pod's, else its ServiceAccount's) is not false, mounted
at :data:`MOUNT_PATH` in each container; clients then use it with the ``KUBERNETES_SERVICE_*``
variables (in-cluster configuration). A local process cannot follow in-cluster configuration:
its client libraries read the fixed path :data:`MOUNT_PATH` and want HTTPS, while LocalKube
serves plain HTTP on loopback. So the process runtime writes a kubeconfig with the same token
next to it and sets ``KUBECONFIG`` (see ``containers.py``): the process authenticates as its
pod's ServiceAccount, and RBAC applies as in a cluster.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from dpserve_testkit.localkube.kubelet.mapping import name_suffix

Obj = dict[str, Any]
MOUNT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
VOLUME_PREFIX = "kube-api-access-"
KUBECONFIG_FILE = "kubeconfig"
TOKEN_EXPIRATION_S = 3607  # what the admission plugin asks for


def automounts(pod_spec: Obj, service_account: Obj | None) -> bool:
    """Whether the API server would add the token volume (pod field, then the SA's)."""
    if "automountServiceAccountToken" in pod_spec:
        return bool(pod_spec["automountServiceAccountToken"])
    if service_account is None:
        return False  # an API server refuses such a pod; the local kubelet mounts nothing
    return bool(service_account.get("automountServiceAccountToken", True))


def with_api_access(pod_spec: Obj) -> Obj:
    """``pod_spec`` with the projected volume and its mount in every container."""
    spec = copy.deepcopy(pod_spec)
    volume = f"{VOLUME_PREFIX}{name_suffix()}"
    spec["volumes"] = [*(spec.get("volumes") or []), {"name": volume, "projected": {
        "defaultMode": 0o644,
        "sources": [
            {"serviceAccountToken": {"path": "token",
                                     "expirationSeconds": TOKEN_EXPIRATION_S}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {
                "apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
        ]}}]
    for container in spec.get("containers") or []:
        mounts = container.get("volumeMounts") or []
        if not any(m.get("mountPath") == MOUNT_PATH for m in mounts):
            container["volumeMounts"] = [*mounts, {"name": volume, "mountPath": MOUNT_PATH,
                                                   "readOnly": True}]
    return spec


def is_api_access(volume_name: str) -> bool:
    return volume_name.startswith(VOLUME_PREFIX)


def kubeconfig(api_url: str, token: str, namespace: str, service_account: str) -> str:
    """What the process runtime puts next to the token: the same credentials, as a client
    outside a pod reads them."""
    user = f"system:serviceaccount:{namespace}:{service_account}"
    return yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "localkube", "cluster": {"server": api_url}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "in-pod", "context": {
            "cluster": "localkube", "user": user, "namespace": namespace}}],
        "current-context": "in-pod",
    }, sort_keys=False)

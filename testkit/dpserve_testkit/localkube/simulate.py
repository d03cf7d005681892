"""Status-only stand-in for the Deployment controller: nothing runs, Deployments turn available.

It writes a Deployment's status as the real controllers would once every replica is up
(observedGeneration, replica counts, the Available condition), so the operator can observe
"available" in the integration tests and the reconcile benchmark without starting pods.
(:mod:`dpserve_testkit.localkube.kubelet` runs the containers for real, for end-to-end tests.)
Writes go straight to the store: they are not API requests and are not counted as such.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from dpserve_testkit.localkube.emulator import LocalKube
from dpserve_testkit.localkube.store import Obj, Watcher, now_rfc3339


def available_status(deployment: Obj) -> dict[str, Any]:
    replicas = int((deployment.get("spec") or {}).get("replicas", 1))
    generation = (deployment.get("metadata") or {}).get("generation", 1)
    stamp = now_rfc3339()
    return {
        "observedGeneration": generation,
        "replicas": replicas,
        "updatedReplicas": replicas,
        "readyReplicas": replicas,
        "availableReplicas": replicas,
        "conditions": [
            {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
             "message": "Deployment has minimum availability.", "lastUpdateTime": stamp,
             "lastTransitionTime": stamp},
            {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
             "message": "ReplicaSet has successfully progressed.", "lastUpdateTime": stamp,
             "lastTransitionTime": stamp},
        ],
    }


def lags(deployment: Obj) -> bool:
    status = deployment.get("status") or {}
    replicas = int((deployment.get("spec") or {}).get("replicas", 1))
    generation = (deployment.get("metadata") or {}).get("generation", 1)
    return bool(status.get("observedGeneration") != generation
                or status.get("availableReplicas", 0) != replicas)


def mark_available(kube: LocalKube, deployment: Obj) -> Obj:
    kind = kube.kind("apps/v1", "deployments")
    meta = deployment["metadata"]
    return kube.store.update(kind, meta["namespace"], meta["name"],
                             {**deployment, "status": available_status(deployment)},
                             subresource="status")


async def simulate_deployments(kube: LocalKube) -> None:
    """Keep every Deployment's status at 'all replicas available' until cancelled."""
    kind = kube.kind("apps/v1", "deployments")
    watcher = Watcher(None, lambda o: True)
    kube.store.subscribe(kind, watcher)
    try:
        for deployment in kube.store.query(kind, None):
            if lags(deployment):
                mark_available(kube, deployment)
        while True:
            event = await watcher.queue.get()
            if event.type == "DELETED":
                continue
            meta = event.obj["metadata"]
            current = kube.store.find(kind, meta.get("namespace"), meta["name"])
            if current is not None and lags(current):
                mark_available(kube, current)
    finally:
        kube.store.unsubscribe(kind, watcher)


def start_simulator(kube: LocalKube) -> asyncio.Task[None]:
    """Start :func:`simulate_deployments` on the emulator's loop (call it on that loop)."""
    return asyncio.get_running_loop().create_task(simulate_deployments(kube))


async def stop_simulator(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task

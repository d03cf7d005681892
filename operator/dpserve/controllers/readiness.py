"""Is a model's Deployment actually serving? Pure functions over the live Deployment and pods.

Ready is never True while a container crash-loops, even if the Deployment still counts
the pod as available from an earlier run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# Waiting reasons that mean the container will not come up without a change.
FAILING_REASONS = (
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "CreateContainerConfigError",
    "CreateContainerError",
    "InvalidImageName",
    "RunContainerError",
)


@dataclass(frozen=True)
class Readiness:
    ready: bool
    reason: str
    message: str
    ready_replicas: int


def failing_container(pods: Sequence[dict[str, Any]]) -> tuple[str, str] | None:
    """(reason, message) of the first container stuck in a failing waiting state."""
    for pod in pods:
        if (pod.get("metadata") or {}).get("deletionTimestamp"):
            continue
        status = pod.get("status") or {}
        statuses = (status.get("initContainerStatuses") or []) + (
            status.get("containerStatuses") or [])
        for cs in statuses:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            reason = waiting.get("reason")
            if reason in FAILING_REASONS:
                pod_name = (pod.get("metadata") or {}).get("name", "?")
                detail = waiting.get("message") or ""
                restarts = cs.get("restartCount", 0)
                message = (f"container {cs.get('name')} of pod {pod_name} is in {reason} "
                           f"(restarts: {restarts}){': ' + detail if detail else ''}")
                # Why it last exited (its termination message, or its last log lines under
                # FallbackToLogsOnError): e.g. the sidecar naming an entity it cannot detect.
                last = ((cs.get("lastState") or {}).get("terminated") or {}).get("message")
                if last and last.strip():
                    message += f"; last exit: {last.strip().splitlines()[-1][:300]}"
                return reason, message
    return None


def serving_readiness(
    replicas: int, deployment: dict[str, Any] | None, pods: Sequence[dict[str, Any]]
) -> Readiness:
    """Readiness of a model that should run ``replicas`` pods (0 is handled by the caller)."""
    if deployment is None:
        return Readiness(False, "DeploymentMissing", "the Deployment does not exist yet", 0)
    status = deployment.get("status") or {}
    available = int(status.get("availableReplicas") or 0)
    failing = failing_container(pods)
    if failing is not None:
        return Readiness(False, failing[0], failing[1], 0)
    generation = (deployment.get("metadata") or {}).get("generation")
    observed = status.get("observedGeneration")
    if generation is not None and (observed is None or observed < generation):
        return Readiness(False, "Progressing",
                         "the Deployment controller has not observed the latest spec yet",
                         available)
    updated = int(status.get("updatedReplicas") or 0)
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            return Readiness(False, "ProgressDeadlineExceeded", cond.get("message", ""), available)
    if available >= replicas and updated >= replicas:
        return Readiness(True, "MinimumReplicasAvailable",
                         f"{available} of {replicas} replicas available", available)
    return Readiness(False, "Progressing", f"{available} of {replicas} replicas available",
                     available)

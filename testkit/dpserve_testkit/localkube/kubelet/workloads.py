"""What the Deployment and Job controllers would write, as pure functions of the pods."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from dpserve_testkit.localkube.kubelet.mapping import now
from dpserve_testkit.localkube.kubelet.pods import LocalPod

Obj = dict[str, Any]


def deployment_status(
    generation: int, desired: int, current: Sequence[LocalPod], old: Sequence[LocalPod]
) -> Obj:
    """Status of a Deployment with ``current`` pods of its template and ``old`` ones."""
    ready_new = sum(1 for p in current if p.ready)
    ready_all = ready_new + sum(1 for p in old if p.ready)
    total = len(current) + len(old)
    available = ready_all >= desired
    return {
        "observedGeneration": generation,
        "replicas": total,
        "updatedReplicas": len(current),
        "readyReplicas": ready_all,
        "availableReplicas": ready_all,
        "unavailableReplicas": max(total - ready_all, 0),
        "conditions": [
            {"type": "Available", "status": "True" if available else "False",
             "reason": "MinimumReplicasAvailable" if available
             else "MinimumReplicasUnavailable",
             "message": "Deployment has minimum availability." if available
             else "Deployment does not have minimum availability."},
            {"type": "Progressing", "status": "True",
             "reason": "NewReplicaSetAvailable" if ready_new >= desired and not old
             else "ReplicaSetUpdated",
             "message": f"{ready_new} of {desired} updated replicas ready"},
        ],
    }


JobAction = Literal["wait", "start", "stop"]


@dataclass(frozen=True)
class JobStep:
    status: Obj
    action: JobAction  # start: one more pod; stop: kill what still runs (Job failed)


def job_step(status: Obj, spec: Obj, pods: Sequence[LocalPod]) -> JobStep:
    """The Job's next status and what to do about its pods (one pod at a time)."""
    completions = int(spec.get("completions", 1) or 1)
    backoff_limit = int(spec.get("backoffLimit", 6))
    succeeded = sum(1 for p in pods if p.succeeded)
    failed = sum(1 for p in pods if p.failed)
    active = sum(1 for p in pods if not p.finished)
    new: Obj = {**status, "startTime": status.get("startTime") or now()}
    if succeeded >= completions:
        new |= {"active": 0, "succeeded": succeeded, "completionTime": now(),
                "conditions": [{"type": "Complete", "status": "True",
                                "reason": "CompletionsReached",
                                "message": "Reached expected number of succeeded pods"}]}
        return JobStep(new, "wait")
    if failed > backoff_limit:
        new |= {"active": 0, "failed": failed,
                "conditions": [{"type": "Failed", "status": "True",
                                "reason": "BackoffLimitExceeded",
                                "message": "Job has reached the specified backoff limit"}]}
        return JobStep(new, "stop")
    new["active"] = max(active, 1)
    if succeeded:
        new["succeeded"] = succeeded
    if failed:
        new["failed"] = failed
    return JobStep(new, "wait" if active else "start")


def job_finished(status: Obj) -> bool:
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
               for c in status.get("conditions") or [])


def same_status(current: Obj, new: Obj) -> bool:
    """Equal but for condition timestamps (a write would change nothing that matters)."""
    def strip(conds: Any) -> list[tuple[Any, ...]]:
        return [(c.get("type"), c.get("status"), c.get("reason"), c.get("message"))
                for c in conds or []]

    return all(current.get(k) == v for k, v in new.items() if k != "conditions") and \
        strip(current.get("conditions")) == strip(new.get("conditions"))


def stamp_conditions(old: Any, new: list[Obj]) -> list[Obj]:
    """lastTransitionTime kept while a condition's status stays, set when it flips."""
    before = {c.get("type"): c for c in old or []}
    out = []
    for cond in new:
        prev = before.get(cond["type"])
        kept = prev.get("lastTransitionTime") if prev and prev.get("status") == cond[
            "status"] else None
        out.append({**cond, "lastTransitionTime": kept or now()})
    return out

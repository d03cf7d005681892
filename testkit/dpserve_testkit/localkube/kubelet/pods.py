"""A local pod and its containers' processes, and the Pod status they are mirrored as."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dpserve_testkit.localkube.kubelet.mapping import now
from dpserve_testkit.localkube.kubelet.probes import ProbeClock

Obj = dict[str, Any]
# Waiting in back-off counts as CrashLoopBackOff (what the operator's readiness looks for).
CRASHLOOP = "CrashLoopBackOff"
TERMINATION_MESSAGE_MAX = 4096
FALLBACK_LOG_LINES = 80


@dataclass
class ContainerRun:
    """One container: how to start it, and the state of its current process."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    termination_path: Path
    fallback_to_logs: bool
    readiness: dict[str, Any] | None
    ports: dict[str, int]  # named container ports (probes may name them)
    image: str = "local"  # what containerStatuses[].image shows
    runtime_id: str = ""  # the container runtime's name for it (podman), if any
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    started_at: str | None = None
    started_mono: float = 0.0
    exit_code: int | None = None
    finished_at: str | None = None
    last_terminated: dict[str, Any] | None = None
    restart_at: float | None = None  # monotonic time of the next start (back-off)
    ready: bool = False
    next_probe: float = 0.0
    waiting: tuple[str, str] | None = None  # (reason, message): the container cannot start
    probes: ProbeClock | None = None  # startup and liveness probes, where it has any

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None


@dataclass(eq=False)  # identity: pods are kept in sets
class LocalPod:
    name: str
    namespace: str
    ip: str
    owner_kind: str  # Deployment | Job
    owner_name: str
    owner_uid: str
    template_hash: str
    labels: dict[str, str]
    annotations: dict[str, str]
    directory: Path
    restart_policy: str
    service_account: str
    grace_s: float
    spec: dict[str, Any]
    uid: str = ""
    containers: list[ContainerRun] = field(default_factory=list)
    # spec.hostAliases as (address, hostnames), a ClusterIP replaced by where the kubelet
    # proxies it (.serviceproxy); filled only for runtimes that follow hostAliases.
    host_aliases: list[tuple[str, list[str]]] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    created_at: str = field(default_factory=now)
    deleted: bool = False
    published: dict[str, Any] | None = None  # the status last written to the API

    @property
    def ready(self) -> bool:
        return bool(self.containers) and all(c.ready for c in self.containers)

    @property
    def finished(self) -> bool:
        """Every container exited for good (never true for restartPolicy Always)."""
        return bool(self.containers) and all(
            c.exit_code is not None and c.restart_at is None and not c.running
            for c in self.containers
        )

    @property
    def succeeded(self) -> bool:
        return self.finished and all(c.exit_code == 0 for c in self.containers)

    @property
    def failed(self) -> bool:
        return self.finished and not self.succeeded


def log_tail(path: Path) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-FALLBACK_LOG_LINES:])[-TERMINATION_MESSAGE_MAX:]


def terminated_state(run: ContainerRun) -> Obj:
    """``state.terminated`` of an exited container, with its termination message."""
    message = ""
    with contextlib.suppress(OSError):
        message = run.termination_path.read_text(encoding="utf-8", errors="replace")
    message = message[-TERMINATION_MESSAGE_MAX:]
    if not message.strip() and run.exit_code not in (0, None) and run.fallback_to_logs:
        message = log_tail(run.log_path)
    code = run.exit_code if run.exit_code is not None else -1
    return {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
            "message": message, "startedAt": run.started_at, "finishedAt": run.finished_at}


def container_status(run: ContainerRun) -> Obj:
    state: Obj
    if run.waiting is not None:
        state = {"waiting": {"reason": run.waiting[0], "message": run.waiting[1]}}
    elif run.restart_at is not None:
        state = {"waiting": {"reason": CRASHLOOP,
                             "message": f"back-off restarting failed container {run.name}"}}
    elif run.exit_code is not None:
        state = {"terminated": terminated_state(run)}
    elif run.process is not None:
        state = {"running": {"startedAt": run.started_at}}
    else:
        state = {"waiting": {"reason": "ContainerCreating"}}
    status: Obj = {"name": run.name, "ready": run.ready, "started": run.running,
                   "restartCount": run.restarts, "state": state, "image": run.image,
                   "imageID": ""}
    last = run.last_terminated
    if run.restart_at is not None and run.exit_code is not None:
        last = terminated_state(run)
    if last is not None:
        status["lastState"] = {"terminated": last}
    return status


def pod_status(pod: LocalPod) -> Obj:
    """The Pod's ``status`` as a kubelet reports it."""
    if pod.succeeded:
        phase = "Succeeded"
    elif pod.failed:
        phase = "Failed"
    else:
        phase = "Running" if any(run.running for run in pod.containers) else "Pending"
    ready = "True" if pod.ready else "False"
    return {
        "phase": phase, "podIP": pod.ip, "podIPs": [{"ip": pod.ip}],
        "hostIP": "127.0.0.1", "startTime": pod.created_at,
        "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Initialized", "status": "True"},
            {"type": "ContainersReady", "status": ready},
            {"type": "Ready", "status": ready},
        ],
        "containerStatuses": [container_status(run) for run in pod.containers],
    }

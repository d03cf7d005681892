"""A container spec as a local process: argv, environment, mounts, config files.

Also the :class:`ContainerRuntime` seam: :class:`ProcessRuntime` (here) runs a container as
a process of this Python environment,
:class:`dpserve_testkit.localkube.kubelet.podman.PodmanRuntime` as a podman container of its
image; both share the mount and env resolution below.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from dpserve_testkit.localkube.kubelet.apiaccess import KUBECONFIG_FILE, MOUNT_PATH
from dpserve_testkit.localkube.kubelet.mapping import (
    DEFAULT_TERMINATION_MESSAGE_PATH,
    IMAGE_ENV,
    PASS_THROUGH_ENV,
    THREAD_ENV,
    Rewriter,
    cpu_threads,
    expand_references,
)
from dpserve_testkit.localkube.kubelet.podnet import HOOK_DIR
from dpserve_testkit.localkube.kubelet.pods import ContainerRun, LocalPod
from dpserve_testkit.localkube.kubelet.probes import ProbeClock
from dpserve_testkit.localkube.kubelet.volumes import Volume

Obj = dict[str, Any]


class ContainerError(Exception):
    """The container cannot start; ``reason`` is the waiting reason a kubelet would report."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def unstartable(pod: LocalPod, container: Obj, reason: str, message: str) -> ContainerRun:
    """A container that stays waiting with ``reason`` (as a kubelet shows it)."""
    name = container.get("name", "?")
    return ContainerRun(
        name=name, argv=[], env={}, log_path=pod.directory / f"{name}.log",
        termination_path=pod.directory / f"{name}.termination-log",
        fallback_to_logs=False, readiness=None, ports={}, waiting=(reason, message),
    )


@dataclass(frozen=True)
class Mount:
    """One volumeMount resolved to a path on this machine."""

    host: Path
    mount_path: str
    read_only: bool
    # configMap / secret / projected: files to write under ``files_root`` before the start.
    files: Mapping[str, str] | None = None
    files_root: Path | None = None
    owned: bool = False  # fsGroup applies (PVC, emptyDir)

    def write_files(self, rewrite: Callable[[str], str]) -> None:
        """Write the per-container files; config files name container paths and
        localhost, so they go through ``rewrite`` like the args."""
        if self.files is None or self.files_root is None:
            return
        self.files_root.mkdir(parents=True, exist_ok=True)
        for rel, content in self.files.items():
            target = self.files_root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(rewrite(content), encoding="utf-8")


def resolve_mounts(
    container: Obj, volumes: Mapping[str, Volume], root: Path
) -> list[Mount]:
    """The container's volumeMounts as host paths (per-container volumes under ``root``)."""
    mounts: list[Mount] = []
    for mount in container.get("volumeMounts") or []:
        volume = volumes.get(mount["name"])
        if volume is None:
            raise ContainerError("CreateContainerConfigError",
                                 f"volumeMount {mount['name']!r}: no such volume")
        host, files, files_root = volume.path, None, None
        read_only = bool(mount.get("readOnly"))
        if volume.per_container:
            host = files_root = root / "volumes" / mount["name"]
            files = volume.files
            read_only = True  # a kubelet mounts configMap, secret and projected read-only
        if mount.get("subPath"):
            host = host / mount["subPath"]
            if files is None:
                host.mkdir(parents=True, exist_ok=True)  # a kubelet creates a missing subPath
        mounts.append(Mount(host, mount["mountPath"], read_only, files, files_root,
                            owned=volume.owned))
    return mounts


def termination_file(pod: LocalPod, name: str) -> Path:
    path = pod.directory / f"{name}.termination-log"
    path.write_bytes(b"")
    return path


def container_command(container: Obj, env: Mapping[str, str],
                      rewrite: Callable[[str], str]) -> list[str]:
    """command + args with ``$(VAR)`` references expanded and addresses mapped."""
    return [rewrite(expand_references(a, env))
            for a in (container.get("command") or []) + (container.get("args") or [])]


def named_ports(container: Obj) -> dict[str, int]:
    return {p["name"]: int(p["containerPort"])
            for p in container.get("ports") or [] if p.get("name")}


def probe_clock(container: Obj) -> ProbeClock | None:
    """The container's startup and liveness probes (None: it has neither)."""
    startup, liveness = container.get("startupProbe"), container.get("livenessProbe")
    return None if startup is None and liveness is None else ProbeClock(startup, liveness)


class ContainerRuntime(Protocol):
    """How the kubelet turns a container of a manifest into a process it can watch."""

    # Whether containers get the pod's hostAliases (LocalPod.host_aliases) in /etc/hosts.
    follows_host_aliases: ClassVar[bool]

    def prepare(self, pod: LocalPod, container: Obj, volumes: Mapping[str, Volume]
                ) -> ContainerRun:
        """argv and env of the process that runs ``container`` (raises ContainerError)."""

    async def release(self, run: ContainerRun) -> None:
        """Clean up after the process is gone (it may have been SIGKILLed)."""


@dataclass(frozen=True)
class ProcessRuntime:
    """Containers as processes of this machine's Python environment (the default).

    ``hosts_file``: the kubelet's Service names (:mod:`.services`); with it, each process
    gets the pod's network through :mod:`.podnet` (wildcard binds on the pod's address,
    Service names resolved) and a mounted ServiceAccount token as ``KUBECONFIG``
    (:mod:`.apiaccess` says why).
    """

    # Service names resolve through .podnet instead (its hosts file).
    follows_host_aliases: ClassVar[bool] = False

    executable_dir: Path
    host_ports: frozenset[int] = frozenset()
    extra_env: Mapping[str, str] = field(default_factory=dict)
    hosts_file: Path | None = None

    def prepare(self, pod: LocalPod, container: Obj, volumes: Mapping[str, Volume]
                ) -> ContainerRun:
        run = container_run(pod, container, volumes, executable_dir=self.executable_dir,
                            host_ports=self.host_ports, extra_env=self.extra_env)
        if self.hosts_file is not None:
            run.env |= pod_network_env(pod, self.hosts_file, run.env.get("PYTHONPATH"))
            mount = api_kubeconfig_mount(container, volumes)
            if mount is not None:
                run.env["KUBECONFIG"] = str(
                    pod.directory / "containers" / str(container["name"]) / "volumes" / mount
                    / KUBECONFIG_FILE)
        return run

    async def release(self, run: ContainerRun) -> None:
        """Nothing outlives the process group the kubelet already killed."""


def pod_network_env(pod: LocalPod, hosts_file: Path, pythonpath: str | None
                    ) -> dict[str, str]:
    """The variables :mod:`.podnet`'s hook reads, and its directory first on PYTHONPATH."""
    return {"LOCALKUBE_POD_IP": pod.ip, "LOCALKUBE_POD_NAMESPACE": pod.namespace,
            "LOCALKUBE_HOSTS": str(hosts_file),
            "PYTHONPATH": os.pathsep.join(p for p in (str(HOOK_DIR), pythonpath) if p)}


def api_kubeconfig_mount(container: Obj, volumes: Mapping[str, Volume]) -> str | None:
    """The volume mounted as the container's API token with a kubeconfig beside the token,
    whose kubeconfig the runtime hands over as ``KUBECONFIG`` (None: no API access mounted,
    or the container sets its own ``KUBECONFIG``)."""
    if "KUBECONFIG" in declared_env(container):
        return None
    for mount in container.get("volumeMounts") or []:
        volume = volumes.get(mount.get("name", ""))
        if (mount.get("mountPath") == MOUNT_PATH and volume is not None
                and KUBECONFIG_FILE in volume.files):
            return str(mount["name"])
    return None


def declared_env(container: Obj) -> set[str]:
    return {str(item.get("name")) for item in container.get("env") or []}


def container_run(
    pod: LocalPod, container: Obj, volumes: Mapping[str, Volume], *, executable_dir: Path,
    host_ports: Iterable[int], extra_env: Mapping[str, str],
) -> ContainerRun:
    """Resolve mounts, write the container's config files, build argv and env.

    Raises :class:`ContainerError` when the container cannot start.
    """
    name = container["name"]
    root = pod.directory / "containers" / name
    (root / "tmp").mkdir(parents=True, exist_ok=True)
    termination = termination_file(pod, name)
    paths: dict[str, Path] = {"/tmp": root / "tmp"}  # the image's own /tmp
    paths[container.get("terminationMessagePath") or DEFAULT_TERMINATION_MESSAGE_PATH] = \
        termination
    mounts = resolve_mounts(container, volumes, root)
    paths |= {m.mount_path: m.host for m in mounts}
    rewrite = Rewriter(paths, pod.ip, host_ports)
    for mount in mounts:
        mount.write_files(rewrite)
    env = container_env(pod, container, rewrite, executable_dir=executable_dir,
                        extra_env=extra_env)
    argv = container_command(container, env, rewrite)
    if not argv:
        raise ContainerError("CreateContainerError",
                             f"container {name}: no command (image entrypoints are not known "
                             "to the local kubelet)")
    if "/" not in argv[0]:
        resolved = shutil.which(argv[0], path=env["PATH"])
        if resolved is None:
            raise ContainerError("RunContainerError",
                                 f"container {name}: executable {argv[0]!r} not found in $PATH")
        argv[0] = resolved
    return ContainerRun(
        name=name, argv=argv, env=env, log_path=pod.directory / f"{name}.log",
        termination_path=termination,
        fallback_to_logs=container.get("terminationMessagePolicy") == "FallbackToLogsOnError",
        readiness=container.get("readinessProbe"), ports=named_ports(container),
        probes=probe_clock(container),
    )


def container_env(
    pod: LocalPod, container: Obj, rewrite: Callable[[str], str], *, executable_dir: Path,
    extra_env: Mapping[str, str],
) -> dict[str, str]:
    """The image's env, thread counts from the CPU limit, then the container's own env."""
    env = {"PATH": f"{executable_dir}{os.pathsep}/usr/local/bin:/usr/bin:/bin",
           "HOSTNAME": pod.name}
    env |= {k: rewrite(v) for k, v in IMAGE_ENV.items()}
    env |= {k: os.environ[k] for k in PASS_THROUGH_ENV if k in os.environ}
    env |= thread_env(container)
    env |= extra_env
    return manifest_env(pod, container, rewrite, env)


def thread_env(container: Obj) -> dict[str, str]:
    """BLAS/OpenMP thread counts from ``resources.limits.cpu``, as a CPU quota bounds them."""
    limits = (container.get("resources") or {}).get("limits") or {}
    return dict.fromkeys(THREAD_ENV, str(cpu_threads(limits.get("cpu"))))


def manifest_env(
    pod: LocalPod, container: Obj, rewrite: Callable[[str], str], env: Mapping[str, str]
) -> dict[str, str]:
    """``env`` plus the container's own ``env`` list (``$(VAR)`` expanded, fieldRefs)."""
    out = dict(env)
    field_values = {
        "metadata.name": pod.name, "metadata.namespace": pod.namespace,
        "metadata.uid": pod.uid, "status.podIP": pod.ip, "status.hostIP": "127.0.0.1",
        "spec.serviceAccountName": pod.service_account, "spec.nodeName": "localkube",
    }
    for item in container.get("env") or []:
        if "value" in item:
            out[item["name"]] = rewrite(expand_references(str(item["value"]), out))
        elif "fieldRef" in (item.get("valueFrom") or {}):
            out[item["name"]] = field_values.get(item["valueFrom"]["fieldRef"]["fieldPath"], "")
        else:
            out[item["name"]] = ""
    return out

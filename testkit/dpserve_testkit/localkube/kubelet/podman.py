"""Containers of the local kubelet as real containers of their images, with podman.

The same kubelet (pods, restarts, probes, Deployment and Job status, tokens) runs each
container as ``podman run`` of the manifest's image instead of a process of this Python:

- the image and the command are the manifest's: ``command`` becomes the entrypoint,
  ``args`` the arguments, ``$(VAR)`` references expanded; nothing is pulled (air-gapped:
  ``--pull=never``, the images come from ``images/build.sh``);
- the volumes are real bind mounts at their ``mountPath`` (``readOnly`` honoured; configMap,
  secret and projected volumes read-only, as a kubelet mounts them), and the termination
  message file is a host file mounted at ``terminationMessagePath``;
- the securityContext is enforced by the kernel: ``runAsUser``/``runAsGroup``, ``fsGroup``
  as a supplementary group that owns the pod's PVC and emptyDir volumes (as a kubelet
  re-owns them), ``readOnlyRootFilesystem``, dropped capabilities, no privilege escalation,
  the runtime's default seccomp filter; ``resources.limits`` become a memory cgroup limit
  and a CPU quota;
- networking is the host's (``--network=host``; podman here has no CNI): the pod's
  containers share one loopback address of their own, exactly as in the process runtime
  (:class:`dpserve_testkit.localkube.kubelet.mapping.Rewriter` maps localhost to it), so several
  pods with the same ports run side by side, during a rolling update too. A wildcard bind
  in a container binds the host's wildcard, as a ``hostNetwork`` pod does (the process
  runtime's hook cannot reach into an image): where a manifest names the wildcard
  (``0.0.0.0``) it is mapped to the pod's address like localhost;
- ``hostAliases`` become ``--add-host`` entries; a Service ClusterIP among them is replaced by
  the kubelet's userspace proxy for it (:mod:`.serviceproxy`: nothing routes ClusterIPs
  here), so the operator's pinned ledger address works; connections through it reach the
  endpoint from the host's side, not from the pod's address;
- a mounted ServiceAccount token comes with ``KUBECONFIG`` pointing at the kubeconfig beside
  it (:mod:`.apiaccess` says why: LocalKube serves plain HTTP on loopback).

``podman run`` stays in the foreground: its exit status is the container's, and SIGTERM to
it reaches the container (podman proxies signals); after SIGKILL the kubelet calls
:meth:`PodmanRuntime.release`, which removes a container that outlived its client.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from dpserve.resources.diff import parse_quantity
from dpserve_testkit.localkube.kubelet.apiaccess import KUBECONFIG_FILE, MOUNT_PATH
from dpserve_testkit.localkube.kubelet.containers import (
    ContainerError,
    Mount,
    api_kubeconfig_mount,
    manifest_env,
    named_ports,
    probe_clock,
    resolve_mounts,
    termination_file,
    thread_env,
)
from dpserve_testkit.localkube.kubelet.mapping import (
    DEFAULT_TERMINATION_MESSAGE_PATH,
    Rewriter,
    expand_references,
)
from dpserve_testkit.localkube.kubelet.pods import ContainerRun, LocalPod
from dpserve_testkit.localkube.kubelet.volumes import Volume

Obj = dict[str, Any]
LABEL = "io.dpserve_testkit.localkube"


def security_context(pod_spec: Obj, container: Obj) -> Obj:
    """The container's effective securityContext (its own fields win over the pod's)."""
    pod_level = pod_spec.get("securityContext") or {}
    own = container.get("securityContext") or {}
    merged = {k: pod_level[k] for k in ("runAsUser", "runAsGroup", "runAsNonRoot",
                                        "seccompProfile") if k in pod_level}
    return merged | own


def security_flags(context: Obj, fs_group: int | None, name: str) -> list[str]:
    """podman flags for a securityContext; refuses what podman here cannot honour."""
    if context.get("privileged"):
        raise ContainerError("CreateContainerConfigError",
                             f"container {name}: privileged containers are not run locally")
    flags: list[str] = []
    user, group = context.get("runAsUser"), context.get("runAsGroup")
    if user is not None:
        flags += ["--user", f"{int(user)}:{int(group if group is not None else user)}"]
    elif context.get("runAsNonRoot"):
        raise ContainerError("CreateContainerConfigError",
                             f"container {name}: runAsNonRoot needs runAsUser here (the "
                             "image's user is not inspected)")
    if fs_group is not None:
        flags += ["--group-add", str(fs_group)]
    if context.get("readOnlyRootFilesystem"):
        flags.append("--read-only")
    capabilities = context.get("capabilities") or {}
    flags += [f"--cap-drop={c.lower()}" for c in capabilities.get("drop") or []]
    flags += [f"--cap-add={c.lower()}" for c in capabilities.get("add") or []]
    if context.get("allowPrivilegeEscalation") is False:
        flags.append("--security-opt=no-new-privileges")
    seccomp = (context.get("seccompProfile") or {}).get("type")
    if seccomp == "Unconfined":
        flags.append("--security-opt=seccomp=unconfined")
    # RuntimeDefault (and unset): podman's default filter.
    return flags


def resource_flags(container: Obj) -> list[str]:
    limits = (container.get("resources") or {}).get("limits") or {}
    flags = []
    if "memory" in limits:
        flags += ["--memory", str(int(parse_quantity(limits["memory"])))]
    if "cpu" in limits:
        flags += ["--cpus", format(float(parse_quantity(limits["cpu"])), "g")]
    return flags


def share_with_group(path: Path, gid: int) -> None:
    """fsGroup with ``OnRootMismatch``: unless the volume's root already belongs to the
    group, every file joins it, group-writable, and directories pass the group on (setgid)."""
    if not path.exists() or path.stat().st_gid == gid:
        return
    for item in [path, *path.rglob("*")]:
        if item.is_symlink():
            continue
        os.chown(item, -1, gid)
        mode = item.stat().st_mode
        extra = stat.S_IRGRP | stat.S_IWGRP
        if item.is_dir():
            extra |= stat.S_IXGRP | stat.S_ISGID
        item.chmod(stat.S_IMODE(mode) | extra)


class PodmanRuntime:
    """Runs each container with ``podman run`` on the host network (see module doc).

    ``host_ports``: ports of the host's own services on 127.0.0.1 (the operator's ledger),
    left unmapped; ``containers_conf``: podman's configuration (``CONTAINERS_CONF``);
    ``extra_env``: added to every container's environment.
    """

    follows_host_aliases: ClassVar[bool] = True

    def __init__(
        self, *, host_ports: Iterable[int] = (), containers_conf: Path | None = None,
        extra_env: Mapping[str, str] | None = None, podman: str = "podman",
    ) -> None:
        self.host_ports = frozenset(host_ports)
        self.extra_env = dict(extra_env or {})
        self.podman = podman
        self.instance = secrets.token_hex(4)  # label value: this kubelet's containers
        self.env = dict(os.environ)
        if containers_conf is not None:
            self.env["CONTAINERS_CONF"] = str(containers_conf)

    def container_name(self, pod: LocalPod, container: str) -> str:
        return f"lk-{pod.namespace}-{pod.name}-{container}"[:200]

    def prepare(self, pod: LocalPod, container: Obj, volumes: Mapping[str, Volume]
                ) -> ContainerRun:
        name = container["name"]
        image = container.get("image")
        if not image:
            raise ContainerError("InvalidImageName", f"container {name}: no image")
        root = pod.directory / "containers" / name
        root.mkdir(parents=True, exist_ok=True)
        termination = termination_file(pod, name)
        mounts = resolve_mounts(container, volumes, root)
        # Paths are real mounts; only localhost is mapped to the pod's own address.
        rewrite = Rewriter({}, pod.ip, self.host_ports)
        for mount in mounts:
            mount.write_files(rewrite)
        context = security_context(pod.spec, container)
        fs_group = (pod.spec.get("securityContext") or {}).get("fsGroup")
        for mount in mounts:
            if fs_group is not None and mount.owned and not mount.read_only:
                share_with_group(mount.host, int(fs_group))
        user = context.get("runAsUser")
        if user is not None:  # the container's user writes its termination message
            os.chown(termination, int(user), -1)
        env = manifest_env(pod, container, rewrite,
                           {"HOSTNAME": pod.name, **thread_env(container), **self.extra_env})
        if api_kubeconfig_mount(container, volumes) is not None:
            env["KUBECONFIG"] = f"{MOUNT_PATH}/{KUBECONFIG_FILE}"
        command = [rewrite(expand_references(a, env)) for a in container.get("command") or []]
        args = [rewrite(expand_references(a, env)) for a in container.get("args") or []]
        argv = [
            self.podman, "run", "--rm", "--replace", "--name", self.container_name(pod, name),
            "--label", f"{LABEL}={self.instance}", "--pull=never", "--network=host",
            "--hostname", pod.name[:63],
            *security_flags(context, fs_group, name), *resource_flags(container),
            *mount_flags(mounts), *host_flags(pod.host_aliases),
            "-v", f"{termination}:"
                  f"{container.get('terminationMessagePath') or DEFAULT_TERMINATION_MESSAGE_PATH}",
        ]  # fmt: skip
        for key, value in env.items():
            argv += ["--env", f"{key}={value}"]
        if command:
            argv += ["--entrypoint", json.dumps(command)]
        argv += [image, *args]
        return ContainerRun(
            name=name, argv=argv, env=self.env, log_path=pod.directory / f"{name}.log",
            termination_path=termination,
            fallback_to_logs=container.get("terminationMessagePolicy") ==
            "FallbackToLogsOnError",
            readiness=container.get("readinessProbe"), ports=named_ports(container),
            probes=probe_clock(container), image=image, runtime_id=self.container_name(pod, name),
        )

    async def release(self, run: ContainerRun) -> None:
        """Remove the container if it outlived its ``podman run`` (after a SIGKILL)."""
        if run.runtime_id:
            await self._podman("rm", "--force", "--time", "0", "--ignore", run.runtime_id)

    async def _podman(self, *args: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            self.podman, *args, env=self.env, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL, stdin=asyncio.subprocess.DEVNULL)
        await proc.wait()


def host_flags(aliases: Iterable[tuple[str, list[str]]]) -> list[str]:
    """``--add-host`` for each hostname of the pod's (mapped) hostAliases."""
    return [flag for address, names in aliases for name in names
            for flag in ("--add-host", f"{name}:{address}")]


def mount_flags(mounts: list[Mount]) -> list[str]:
    flags: list[str] = []
    for mount in mounts:
        if not mount.host.exists():
            raise ContainerError("CreateContainerConfigError",
                                 f"volumeMount {mount.mount_path}: {mount.host} does not exist")
        flags += ["-v", f"{mount.host}:{mount.mount_path}:{'ro' if mount.read_only else 'rw'}"]
    return flags

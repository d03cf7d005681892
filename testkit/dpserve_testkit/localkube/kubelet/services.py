"""Service names for the process runtime's pods: the hosts file that ``podnet`` reads.

The local kubelet plays kube-proxy and the cluster DNS. A process cannot be given a virtual
ClusterIP, so a Service name resolves to its endpoints' pod addresses directly (as a headless
Service's does): only ready pods (all of them with ``publishNotReadyAddresses``), only while
each Service port equals the port its ``targetPort`` names on those pods (nothing here
translates ports; such a Service is left out and reported).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from dpserve_testkit.localkube.kubelet.pods import LocalPod

Obj = dict[str, object]


@dataclass(frozen=True)
class HostsFile:
    text: str
    problems: tuple[str, ...]  # Services whose ports cannot be followed


def target_port(port: dict[str, object], pod: LocalPod) -> int | None:
    target = port.get("targetPort", port.get("port"))
    if isinstance(target, int):
        return target
    if isinstance(target, str):
        if target.isdigit():
            return int(target)
        for run in pod.containers:
            if target in run.ports:
                return run.ports[target]
    return None


def selects(selector: dict[str, str], pod: LocalPod) -> bool:
    return bool(selector) and all(pod.labels.get(k) == v for k, v in selector.items())


def hosts_file(services: Iterable[dict[str, object]], pods: Sequence[LocalPod]) -> HostsFile:
    """``<address> <names...>`` per endpoint, ``- <names...>`` for a Service without one."""
    lines: list[str] = []
    problems: list[str] = []
    for service in sorted(services, key=lambda s: _name(s)):
        meta = service.get("metadata") or {}
        spec = service.get("spec") or {}
        assert isinstance(meta, dict) and isinstance(spec, dict)
        name, namespace = str(meta.get("name")), str(meta.get("namespace"))
        selector = spec.get("selector") or {}
        if not isinstance(selector, dict) or not selector:
            continue  # endpoints managed by hand: not emulated
        publish_all = bool(spec.get("publishNotReadyAddresses"))
        ports = [p for p in spec.get("ports") or [] if isinstance(p, dict)]
        names = " ".join((f"{name}.{namespace}.svc.cluster.local", f"{name}.{namespace}.svc",
                          f"{name}.{namespace}"))
        endpoints = [p for p in pods if p.namespace == namespace and selects(selector, p)
                     and (publish_all or p.ready)]
        mismatched = [f"{p.get('port')}->{p.get('targetPort')}" for p in ports for pod in
                      endpoints if target_port(p, pod) != p.get("port")]
        if mismatched:
            problems.append(f"Service {namespace}/{name}: port {mismatched[0]} differs from "
                            "its target port (the process runtime does not translate ports)")
            endpoints = []
        lines += [f"{pod.ip} {names}" for pod in sorted(endpoints, key=lambda p: p.ip)]
        if not endpoints:
            lines.append(f"- {names}")
    return HostsFile("".join(line + "\n" for line in lines), tuple(problems))


def _name(service: dict[str, object]) -> tuple[str, str]:
    meta = service.get("metadata") or {}
    assert isinstance(meta, dict)
    return str(meta.get("namespace")), str(meta.get("name"))

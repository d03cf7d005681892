"""kube-proxy's userspace mode, for containers on the host network (the podman runtime).

A Service's ClusterIP (``clusterips``: 10.96.0.0/16) is routed nowhere on this machine, and a
container cannot use :mod:`.podnet`'s name resolution (it runs its image's Python, not this
one). The operator pins the ledger Service's ClusterIP in serving pods' ``hostAliases``; to
follow that, the kubelet gives each ClusterIP a container asks for a loopback address of its
own (:meth:`ServiceProxy.address`), listens there on the Service's ports, and forwards each
connection to one ready endpoint of the Service (its ``targetPort``), chosen when the
connection arrives, as kube-proxy's userspace mode did up to Kubernetes 1.26. So a container
started before its Service had a ready endpoint, or whose endpoint was replaced (a Recreate
rollout of the operator), reaches the current one.

What it cannot keep: the client's source address. The endpoint sees the connection come from
the proxy's host side (as behind a masquerading proxy), which is why the ledger's
source-address check is switched off where containers reach it through here.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dpserve_testkit.localkube.clusterips import RANGE
from dpserve_testkit.localkube.kubelet.pods import LocalPod
from dpserve_testkit.localkube.kubelet.services import selects, target_port

log = logging.getLogger("dpserve.kubelet.proxy")
Obj = dict[str, Any]
COPY_CHUNK = 64 * 1024


@dataclass
class _Routes:
    """One proxied Service: its ports (Service port -> port spec) and current endpoints."""

    ports: dict[int, Obj] = field(default_factory=dict)
    endpoints: Sequence[LocalPod] = ()


def is_cluster_ip(address: str) -> bool:
    try:
        return ipaddress.ip_address(address) in RANGE
    except ValueError:
        return False


class ServiceProxy:
    """Loopback addresses standing in for ClusterIPs (see the module doc).

    ``take_address`` hands out fresh loopback addresses (the kubelet's pod address pool).
    """

    def __init__(self, take_address: Callable[[], str]) -> None:
        self._take = take_address
        self._addresses: dict[str, str] = {}  # ClusterIP -> local address
        self._routes: dict[str, _Routes] = {}  # ClusterIP -> what it serves now
        self._servers: dict[tuple[str, int], asyncio.Server] = {}  # (ClusterIP, port)
        self._pipes: set[asyncio.Task[None]] = set()

    def address(self, ip: str) -> str:
        """Where a container reaches ``ip``: the proxy's address for a ClusterIP, else ``ip``."""
        if not is_cluster_ip(ip):
            return ip
        if ip not in self._addresses:
            self._addresses[ip] = self._take()
        return self._addresses[ip]

    async def sync(self, services: Iterable[Obj], pods: Sequence[LocalPod]) -> None:
        """Listen on the ports of each asked-for ClusterIP's Service; follow its endpoints."""
        by_ip = {str((s.get("spec") or {}).get("clusterIP")): s for s in services}
        for ip in self._addresses:
            service = by_ip.get(ip)
            if service is None:
                self._routes.pop(ip, None)
                continue
            spec = service.get("spec") or {}
            meta = service.get("metadata") or {}
            selector = spec.get("selector") or {}
            publish_all = bool(spec.get("publishNotReadyAddresses"))
            routes = self._routes.setdefault(ip, _Routes())
            routes.ports = {int(p["port"]): p for p in spec.get("ports") or []
                            if isinstance(p, dict) and p.get("port")}
            routes.endpoints = [p for p in pods if p.namespace == meta.get("namespace")
                                and selects(selector, p) and (publish_all or p.ready)]
            for port in routes.ports:
                if (ip, port) not in self._servers:
                    await self._listen(ip, port)

    async def _listen(self, ip: str, port: int) -> None:
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._pipes.add(task)
            try:
                await self._forward(ip, port, reader, writer)
            finally:
                self._pipes.discard(task)

        try:
            self._servers[(ip, port)] = await asyncio.start_server(
                accept, self._addresses[ip], port)
        except OSError as exc:
            log.warning("Service %s:%d: cannot listen on %s: %s", ip, port,
                        self._addresses[ip], exc)

    async def _forward(self, ip: str, port: int, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
        routes = self._routes.get(ip)
        spec = routes.ports.get(port) if routes is not None else None
        targets = [(pod.ip, target_port(spec, pod)) for pod in routes.endpoints] \
            if routes is not None and spec is not None else []
        targets = [(host, p) for host, p in targets if p is not None]
        if not targets:  # no ready endpoint: refused, as kube-proxy rejects it
            writer.close()
            return
        host, target = secrets.choice(targets)
        try:
            up_reader, up_writer = await asyncio.open_connection(host, target)
        except OSError:
            writer.close()
            return
        try:
            await asyncio.gather(_copy(reader, up_writer), _copy(up_reader, writer))
        finally:
            up_writer.close()
            writer.close()

    async def close(self) -> None:
        for server in self._servers.values():
            server.close()
        for task in list(self._pipes):
            task.cancel()
        for server in self._servers.values():
            with contextlib.suppress(Exception):
                await server.wait_closed()
        self._servers.clear()


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Bytes from ``reader`` to ``writer`` until EOF; then half-close (or close) ``writer``."""
    try:
        while chunk := await reader.read(COPY_CHUNK):
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        else:
            writer.close()
    except (ConnectionError, OSError):
        writer.close()

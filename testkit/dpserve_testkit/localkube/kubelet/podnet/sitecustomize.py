"""The pod's network for a Python process run by the local kubelet's process runtime.

A container has its pod's network namespace and the cluster's DNS; a local process has the
host's. The kubelet sets the variables below for each container process, and this module
(imported by Python's ``site`` at start, before the program) closes the two gaps that matter:

- a wildcard bind (``0.0.0.0`` or ``""``) binds the pod's own address (``LOCALKUBE_POD_IP``):
  in a pod it would listen on the pod's interfaces only, and on the host it would collide
  with every other pod's port;
- an outgoing IPv4 connection leaves from the pod's address, as from a pod's interface (the
  ledger checks that a lease request comes from the token's pod); on the host it would leave
  from 127.0.0.1, the address of no pod;
- cluster DNS names of Services (``<svc>.<ns>.svc.cluster.local``, ``<svc>.<ns>.svc``,
  ``<svc>.<ns>``, and a bare ``<svc>`` of the pod's namespace, ``LOCALKUBE_POD_NAMESPACE``)
  resolve to the addresses the kubelet lists in the hosts file ``LOCALKUBE_HOSTS`` (the
  Services' ready endpoints, as a headless Service resolves); a Service name the file lacks
  does not resolve. Other names go to the host's resolver. Both Python's resolver and
  uvloop's (``Loop.getaddrinfo``, which bypasses it) are covered, and uvloop's connections
  (``Loop.create_connection`` to an IPv4 address) leave from the pod's address; a wildcard
  bind by uvloop itself is not covered (its servers bind through libuv).

Nothing here is imported by the operator or the data plane themselves.
"""

from __future__ import annotations

import ipaddress
import os
import random
import socket
from typing import Any

_POD_IP = os.environ.get("LOCALKUBE_POD_IP", "")
_HOSTS = os.environ.get("LOCALKUBE_HOSTS", "")
_NAMESPACE = os.environ.get("LOCALKUBE_POD_NAMESPACE", "default")
_SUFFIX = ".svc.cluster.local"


def _cluster_name(host: str) -> str | None:
    """The fully qualified Service name ``host`` stands for, or None (not a cluster name)."""
    name = host.rstrip(".").lower()
    if name.endswith(_SUFFIX):
        return name
    if name.endswith(".svc"):
        return name + ".cluster.local"
    dots = name.count(".")
    if dots == 0:
        return f"{name}.{_NAMESPACE}{_SUFFIX}"
    if dots == 1:
        return name + _SUFFIX
    return None


def _lookup(host: str) -> list[str] | None:
    """Addresses of a Service name; None: not one the kubelet publishes (host resolver)."""
    name = _cluster_name(host)
    if name is None or not _HOSTS:
        return None
    try:
        with open(_HOSTS, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    known = False
    addresses: list[str] = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 2 and name in fields[1:]:
            known = True
            if fields[0] != "-":  # "- name": a Service without ready endpoints
                addresses.append(fields[0])
    if not known:
        # A short name that is no Service of the pod's namespace may be a host's name.
        return [] if host.rstrip(".").lower().endswith((".svc", _SUFFIX)) else None
    random.shuffle(addresses)  # kube-proxy spreads connections over the endpoints
    return addresses


_getaddrinfo = socket.getaddrinfo


def _pod_getaddrinfo(host: Any, port: Any, family: int = 0, type: int = 0,
                     proto: int = 0, flags: int = 0) -> Any:
    text = host.decode() if isinstance(host, bytes) else host
    addresses = _lookup(text) if isinstance(text, str) and text else None
    if addresses is None:
        return _getaddrinfo(host, port, family, type, proto, flags)
    if not addresses:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    return [info for address in addresses
            for info in _getaddrinfo(address, port, family, type, proto,
                                     flags | socket.AI_NUMERICHOST)]


_bind = socket.socket.bind


def _pod_bind(self: socket.socket, address: Any) -> None:
    if (self.family == socket.AF_INET and isinstance(address, tuple)
            and address[0] in ("", "0.0.0.0")):
        address = (_POD_IP, *address[1:])
    _bind(self, address)


_connect = socket.socket.connect
_connect_ex = socket.socket.connect_ex


def _bind_pod_source(sock: socket.socket) -> None:
    """Bind an unbound IPv4 socket to the pod's address before it connects."""
    if sock.family != socket.AF_INET or sock.type != socket.SOCK_STREAM:
        return
    try:
        bound = sock.getsockname()[0] != "0.0.0.0"
    except OSError:
        return
    if not bound:
        _bind(sock, (_POD_IP, 0))


def _pod_connect(self: socket.socket, address: Any) -> None:
    _bind_pod_source(self)
    _connect(self, address)


def _pod_connect_ex(self: socket.socket, address: Any) -> int:
    _bind_pod_source(self)
    return _connect_ex(self, address)


def _ipv4(host: Any) -> bool:
    try:
        return isinstance(ipaddress.ip_address(host), ipaddress.IPv4Address)
    except (TypeError, ValueError):
        return False


def _patch_uvloop() -> None:
    """uvloop resolves through libuv, not ``socket.getaddrinfo``: wrap its loop's method
    (aiohttp's resolver calls it, then connects to the addresses it returns)."""
    try:
        import uvloop
    except ImportError:
        return
    resolve = uvloop.Loop.getaddrinfo

    async def getaddrinfo(self: Any, host: Any, port: Any, *, family: int = 0, type: int = 0,
                          proto: int = 0, flags: int = 0) -> Any:
        text = host.decode() if isinstance(host, bytes) else host
        addresses = _lookup(text) if isinstance(text, str) and text else None
        if addresses is None:
            return await resolve(self, host, port, family=family, type=type, proto=proto,
                                 flags=flags)
        if not addresses:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        found = []
        for address in addresses:
            found += await resolve(self, address, port, family=family, type=type,
                                   proto=proto, flags=flags | socket.AI_NUMERICHOST)
        return found

    uvloop.Loop.getaddrinfo = getaddrinfo  # type: ignore[method-assign]
    connect = uvloop.Loop.create_connection

    async def create_connection(self: Any, protocol_factory: Any, host: Any = None,
                                port: Any = None, **kwargs: Any) -> Any:
        # aiohttp resolves first and connects to the address: an IPv4 literal here.
        if kwargs.get("local_addr") is None and kwargs.get("sock") is None and _ipv4(host):
            kwargs["local_addr"] = (_POD_IP, 0)
        return await connect(self, protocol_factory, host, port, **kwargs)

    uvloop.Loop.create_connection = create_connection  # type: ignore[method-assign]


if _POD_IP:
    socket.socket.bind = _pod_bind  # type: ignore[method-assign,assignment]
    socket.socket.connect = _pod_connect  # type: ignore[method-assign,assignment]
    socket.socket.connect_ex = _pod_connect_ex  # type: ignore[method-assign,assignment]
    socket.getaddrinfo = _pod_getaddrinfo
    _patch_uvloop()

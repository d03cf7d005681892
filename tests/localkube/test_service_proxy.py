"""The kubelet's userspace proxy for ClusterIPs (containers on the host network reach a
Service's pinned ClusterIP through it)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from dpserve_testkit.localkube.kubelet import AddressPool, ContainerRun, LocalPod
from dpserve_testkit.localkube.kubelet.serviceproxy import ServiceProxy, is_cluster_ip

CLUSTER_IP = "10.96.0.12"


def service(target: int | str = 9443) -> dict[str, Any]:
    return {"metadata": {"name": "ledger", "namespace": "ops"},
            "spec": {"clusterIP": CLUSTER_IP, "selector": {"app": "operator"},
                     "ports": [{"port": 8443, "targetPort": target}]}}


def pod(tmp_path: Path, ip: str, *, ready: bool = True, app: str = "operator") -> LocalPod:
    local = LocalPod(
        name=f"op-{ip}", namespace="ops", ip=ip, owner_kind="Deployment", owner_name="op",
        owner_uid="u", template_hash="h", labels={"app": app}, annotations={},
        directory=tmp_path, restart_policy="Always", service_account="op", grace_s=1.0,
        spec={})
    run = ContainerRun(name="operator", argv=[], env={}, log_path=tmp_path / "l",
                       termination_path=tmp_path / "t", fallback_to_logs=False,
                       readiness=None, ports={"ledger": 9443}, ready=ready)
    local.containers.append(run)
    return local


@pytest.fixture
async def pool() -> AsyncIterator[AddressPool]:
    addresses = AddressPool()
    yield addresses
    addresses.close()


async def serve(ip: str, reply: bytes) -> asyncio.Server:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.read(100)
        writer.write(reply + b":" + request)
        await writer.drain()
        writer.close()

    return await asyncio.start_server(answer, ip, 9443)


async def ask(address: str) -> bytes:
    """The answer to ``ping`` (b"": the connection was closed or reset without one)."""
    reader, writer = await asyncio.open_connection(address, 8443)
    try:
        writer.write(b"ping")
        writer.write_eof()
        return await reader.read()
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


async def test_a_cluster_ip_is_forwarded_to_the_current_ready_endpoint(
        tmp_path: Path, pool: AddressPool) -> None:
    proxy = ServiceProxy(pool.take)
    first_ip, second_ip = pool.take(), pool.take()
    first, second = await serve(first_ip, b"first"), await serve(second_ip, b"second")
    try:
        address = proxy.address(CLUSTER_IP)
        assert address.startswith("127.0.") and proxy.address(CLUSTER_IP) == address
        assert proxy.address("127.0.0.1") == "127.0.0.1"  # not a ClusterIP: unchanged
        # No ready endpoint yet: the connection is refused (closed without an answer).
        await proxy.sync([service()], [pod(tmp_path, first_ip, ready=False)])
        assert await ask(address) == b""
        # The ready endpoint, through its named target port.
        await proxy.sync([service("ledger")], [pod(tmp_path, first_ip)])
        assert await ask(address) == b"first:ping"
        # A Recreate rollout: the next connection reaches the new pod; pods the selector
        # does not match never get traffic.
        await proxy.sync([service()], [pod(tmp_path, second_ip),
                                       pod(tmp_path, first_ip, app="other")])
        assert await ask(address) == b"second:ping"
    finally:
        await proxy.close()
        for server in (first, second):
            server.close()


def test_only_the_service_range_is_proxied() -> None:
    assert is_cluster_ip("10.96.3.4")
    assert not is_cluster_ip("10.97.0.1") and not is_cluster_ip("127.0.0.1")
    assert not is_cluster_ip("ledger.example")

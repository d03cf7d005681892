"""Slow clients are cut off while others are served (issue 13, item 4).

The real listener (``LedgerService.start``) with small timeouts: a client trickling its
headers or its body one byte at a time is disconnected by the server before it finishes
sending, a healthy client is served meanwhile, and one peer cannot hold more than
``max_connections_per_client`` connections.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from ledger_helpers import FakeReviewer, lease_body, make_service

from dpserve.ledger.service import LedgerService
from dpserve_testkit.memory_store import MemoryStore

TRICKLE_S = 0.05  # the slow client's pace: one byte per TRICKLE_S


@pytest.fixture
async def served(
    store: MemoryStore, reviewer: FakeReviewer
) -> AsyncIterator[tuple[LedgerService, int]]:
    service = make_service(store, reviewer, header_timeout_s=0.5, body_timeout_s=0.5,
                           max_connections_per_client=4)
    port = await service.start("127.0.0.1", 0)
    try:
        yield service, port
    finally:
        await service.stop()


async def _trickle(port: int, at_once: bytes, slowly: bytes) -> tuple[int, bytes]:
    """Send ``at_once``, then ``slowly`` one byte at a time; how many of those bytes went
    out before the server closed the connection, and what it answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    closed = asyncio.ensure_future(reader.read())  # b"" / the answer once the server closes
    writer.write(at_once)
    await writer.drain()
    data = slowly
    sent = 0
    try:
        for index in range(len(data)):
            if closed.done():
                break
            writer.write(data[index:index + 1])
            await writer.drain()
            sent += 1
            await asyncio.wait({closed}, timeout=TRICKLE_S)
        answer = await asyncio.wait_for(closed, timeout=30)
    except (ConnectionResetError, BrokenPipeError):
        answer = b""
    finally:
        writer.close()
    return sent, answer


async def _healthy_lease(port: int, lease_id: str) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"http://127.0.0.1:{port}/v1/leases", json=lease_body(lease_id),
                     headers={"Authorization": "Bearer tok-triage"}) as response,
    ):
        return response.status


def _request(body: bytes) -> bytes:
    return (b"POST /v1/leases HTTP/1.1\r\nHost: ledger\r\nAuthorization: Bearer tok-triage\r\n"
            b"Content-Type: application/json\r\nX-Padding: " + b"x" * 400 + b"\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode())


async def test_a_client_trickling_its_headers_is_cut_off_while_others_are_served(
    served: tuple[LedgerService, int],
) -> None:
    _, port = served
    body = json.dumps(lease_body("lease-slow-head")).encode()
    head = _request(body)
    slow = asyncio.ensure_future(_trickle(port, b"", head + body))
    statuses = [await _healthy_lease(port, f"lease-fast-{i:04d}") for i in range(3)]
    sent, answer = await slow
    assert statuses == [200, 200, 200]
    assert sent < len(head), "the server let the slow client finish its headers"
    assert answer == b""  # closed without an answer: no request was ever read


async def test_a_client_trickling_its_body_is_cut_off_while_others_are_served(
    served: tuple[LedgerService, int],
) -> None:
    _, port = served
    body = json.dumps(lease_body("lease-slow-body")).encode() + b" " * 400
    head = _request(body)
    slow = asyncio.ensure_future(_trickle(port, head, body))  # headers at once, body slowly
    assert await _healthy_lease(port, "lease-fast-0001") == 200
    sent, answer = await slow
    assert sent < len(body), "the server let the slow client finish its body"
    assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
    assert b"body: not received within" in answer


async def test_one_peer_cannot_hold_more_than_its_connections(
    served: tuple[LedgerService, int],
) -> None:
    service, port = served
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await asyncio.wait_for(reader.read(), timeout=30) == b""  # closed at once
    assert service.connections.refused == 1
    writer.close()
    for _, held_writer in held:
        held_writer.close()
    # Once they are gone, the peer is served again.
    while service.connections.open:  # noqa: ASYNC110 - waits on the server's own bookkeeping
        await asyncio.sleep(0.01)
    assert await _healthy_lease(port, "lease-after-0001") == 200

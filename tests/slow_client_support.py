"""Slow and greedy HTTP clients for the connection-limit tests of the sidecar and the model
server: raw sockets, one byte at a time, and waiting on what the server does."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class Trickled:
    sent: int  # bytes sent before the server closed
    total: int  # bytes the client meant to send
    answer: bytes  # everything the server wrote before closing


async def trickle(port: int, data: bytes, *, interval: float,
                  started: asyncio.Event | None = None) -> Trickled:
    """Send ``data`` one byte per ``interval`` seconds until the server closes the
    connection (or all of it is sent and the server closes after answering)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = asyncio.create_task(_read_until_closed(reader))
    sent = 0
    try:
        for position in range(len(data)):
            if answer.done():
                break
            try:
                writer.write(data[position:position + 1])
                await writer.drain()
            except (ConnectionError, OSError):
                break
            sent += 1
            if started is not None:
                started.set()
            # The pace of the slow client; ends early when the server closes.
            await asyncio.wait({answer}, timeout=interval)
        received = await answer
    finally:
        answer.cancel()
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()
    return Trickled(sent, len(data), received)


async def _read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes (a reset after an answer included: the
    server closed with bytes of ours unread)."""
    received = bytearray()
    with contextlib.suppress(ConnectionError):
        while chunk := await reader.read(65536):
            received += chunk
    return bytes(received)


def request_head(path: str, *, body_length: int | None = None) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    if body_length is not None:
        head += f"Content-Length: {body_length}\r\n"
    return head.encode() + b"X-Padding: " + b"a" * 200 + b"\r\n" + (
        b"\r\n" if body_length is not None else b"")


async def hold_connection(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def read_answer(reader: asyncio.StreamReader) -> bytes:
    """What the server sends before closing (a refusal), within 30 s."""
    return await asyncio.wait_for(reader.read(), 30)


async def served_again(port: int, path: str) -> int:
    """The status of a GET of ``path`` on a fresh connection, retried while the server
    refuses the connection (over the per-client limit), for at most 30 s."""
    async with asyncio.timeout(30):
        while True:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                             f"Connection: close\r\n\r\n".encode())
                answer = await reader.read()
            finally:
                writer.close()
            if b"TooManyConnections" not in answer:
                return int(answer.split(b" ", 2)[1])
            await asyncio.sleep(0.01)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])

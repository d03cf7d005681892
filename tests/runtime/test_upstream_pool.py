"""The sidecar's lean upstream client (filter/upstream.py) against a raw TCP server that
answers exactly the bytes each test gives: what it accepts, what it refuses, and that a
connection is reused only after a complete, well-framed answer."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from dpserve_runtime.filter.upstream import (
    UpstreamDisconnected,
    UpstreamError,
    UpstreamPool,
    UpstreamProtocolViolation,
    UpstreamTooLarge,
    supports,
)

Reply = Callable[[bytes], list[bytes] | None]  # request bytes -> pieces to send, None: close


@dataclass
class RawServer:
    reply: Reply
    port: int = 0
    close_after: bool = False  # close the connection after each answer
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                pieces = self.reply(request)
                if pieces is None:
                    break
                for piece in pieces:
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(0)  # a yield, not a wait: pieces go out one by one
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., object]]:
    servers: list[RawServer] = []
    pools: list[UpstreamPool] = []

    async def factory(reply: Reply, **pool_args: object) -> tuple[RawServer, UpstreamPool]:
        server = RawServer(reply)
        await server.start()
        servers.append(server)
        pool = UpstreamPool(f"http://127.0.0.1:{server.port}",
                            **{"timeout": 2.0, "max_body": 1024, **pool_args})  # type: ignore[arg-type]
        pools.append(pool)
        return server, pool

    yield factory
    for pool in pools:
        await pool.close()
    for server in servers:
        assert server.server is not None
        server.server.close()


def answer(body: bytes, status: str = "200 OK", extra: bytes = b"") -> list[bytes]:
    return [b"HTTP/1.1 " + status.encode() + b"\r\nContent-Type: application/json\r\n"
            + extra + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body]


async def test_answers_and_reuses_one_connection(serve: Callable[..., object]) -> None:
    server, pool = await serve(lambda request: answer(b'{"ok":true}'))  # type: ignore[misc]
    for n in range(5):
        assert await pool.post("/v1/predict", b'{"inputs":[1]}', f"id-{n}") == (
            200, b'{"ok":true}')
    assert server.connections == 1
    head = server.requests[0].split(b"\r\n\r\n")[0]
    assert head.startswith(b"POST /v1/predict HTTP/1.1\r\n")
    assert b"X-Request-Id: id-0" in head and b"Accept-Encoding" not in head


async def test_pieces_chunked_and_error_statuses(serve: Callable[..., object]) -> None:
    chunked = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"5\r\nhel",
               b"lo\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n"]
    _, pool = await serve(lambda request: chunked)  # type: ignore[misc]
    assert await pool.post("/p", b"{}", "a") == (200, b"hello world")
    assert await pool.post("/p", b"{}", "b") == (200, b"hello world")
    _, pool = await serve(lambda request: answer(b'{"reason":"x"}', "422 Unprocessable"))  # type: ignore[misc]
    assert await pool.post("/p", b"{}", "a") == (422, b'{"reason":"x"}')


async def test_an_answer_until_eof_is_read_and_not_reused(
        serve: Callable[..., object]) -> None:
    server, pool = await serve(  # type: ignore[misc]
        lambda request: [b"HTTP/1.0 200 OK\r\n\r\nall ", b"of it"])
    server.close_after = True
    assert await pool.post("/p", b"{}", "a") == (200, b"all of it")
    assert await pool.post("/p", b"{}", "b") == (200, b"all of it")
    assert server.connections == 2


@pytest.mark.parametrize("pieces, error", [
    ([b"HTTP/2 200 OK\r\nContent-Length: 2\r\n\r\n{}"], UpstreamProtocolViolation),
    ([b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"],
     UpstreamProtocolViolation),
    ([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}"],
     UpstreamProtocolViolation),
    ([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}"],
     UpstreamProtocolViolation),
    ([b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\n{}"], UpstreamProtocolViolation),
    ([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"],
     UpstreamProtocolViolation),
    ([b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 2\r\n\r\n{}"],
     UpstreamProtocolViolation),
    ([b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\nContent-Length: 2\r\n\r\n{}"],
     UpstreamProtocolViolation),
    ([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"],
     UpstreamProtocolViolation),
    ([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}XX0\r\n\r\n"],
     UpstreamProtocolViolation),
    ([b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n"], UpstreamTooLarge),
    ([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n"], UpstreamTooLarge),
    ([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}"], UpstreamDisconnected),
    ([b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70_000], UpstreamProtocolViolation),
])
async def test_malformed_answers_fail_and_close(serve: Callable[..., object],
                                                pieces: list[bytes],
                                                error: type[Exception]) -> None:
    sent: list[int] = []

    def reply(request: bytes) -> list[bytes] | None:
        sent.append(1)
        return pieces if len(sent) == 1 else answer(b'{"ok":1}')

    server, pool = await serve(reply)  # type: ignore[misc]
    # A truncated answer ends with the connection; otherwise the server keeps it open and
    # the client must close it itself.
    server.close_after = error is UpstreamDisconnected
    with pytest.raises(error):
        await pool.post("/p", b"{}", "a")
    # The next request never reads the rest of the bad answer: a new connection.
    assert await pool.post("/p", b"{}", "b") == (200, b'{"ok":1}')
    assert server.connections == 2


async def test_extra_bytes_or_connection_close_mean_no_reuse(
        serve: Callable[..., object]) -> None:
    server, pool = await serve(  # type: ignore[misc]
        lambda request: [answer(b"{}")[0] + b"HTTP/1.1 200 OK\r\n"])
    assert await pool.post("/p", b"{}", "a") == (200, b"{}")
    assert await pool.post("/p", b"{}", "b") == (200, b"{}")
    assert server.connections == 2
    server, pool = await serve(  # type: ignore[misc]
        lambda request: answer(b"{}", extra=b"Connection: close\r\n"))
    assert await pool.post("/p", b"{}", "a") == (200, b"{}")
    assert await pool.post("/p", b"{}", "b") == (200, b"{}")
    assert server.connections == 2


async def test_timeout_closes_the_connection(serve: Callable[..., object]) -> None:
    slow = {"on": True}

    def reply(request: bytes) -> list[bytes] | None:
        return [] if slow["on"] else answer(b"{}")

    server, pool = await serve(reply, timeout=0.2)  # type: ignore[misc]
    with pytest.raises(TimeoutError):
        await pool.post("/p", b"{}", "a")
    slow["on"] = False
    assert await pool.post("/p", b"{}", "b") == (200, b"{}")
    assert server.connections == 2


async def test_cancelled_request_closes_and_frees_its_slot(
        serve: Callable[..., object]) -> None:
    hold, arrived = asyncio.Event(), asyncio.Event()

    def reply(request: bytes) -> list[bytes]:
        arrived.set()
        return answer(b"{}") if hold.is_set() else []

    server, pool = await serve(reply, limit=1)  # type: ignore[misc]
    task = asyncio.create_task(pool.post("/p", b"{}", "a"))
    await arrived.wait()  # the request is in flight on the pool's one connection
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    hold.set()
    assert await pool.post("/p", b"{}", "b") == (200, b"{}")
    assert server.connections == 2


async def test_limit_queues_requests(serve: Callable[..., object]) -> None:
    server, pool = await serve(lambda request: answer(b"{}"), limit=2)  # type: ignore[misc]
    results = await asyncio.gather(*(pool.post("/p", b"{}", f"r{n}") for n in range(10)))
    assert results == [(200, b"{}")] * 10
    assert server.connections <= 2


class _NotifyingQueue(deque[asyncio.Future[None]]):
    """The pool's waiter queue, telling the test when a waiter joins it."""

    def __init__(self) -> None:
        super().__init__()
        self.joined = asyncio.Event()

    def append(self, waiter: asyncio.Future[None]) -> None:
        super().append(waiter)
        self.joined.set()


async def test_a_freed_slot_goes_to_the_oldest_waiter(serve: Callable[..., object]) -> None:
    """Handed over, not freed: a request arriving as a slot frees queues behind the waiters
    (else, past the limit, a waiter could lose every race until its timeout)."""
    server, pool = await serve(lambda request: answer(b"{}"), limit=1)  # type: ignore[misc]
    pool._in_use = 1  # one request in flight
    pool._slot_waiters = queue = _NotifyingQueue()
    waiting = asyncio.create_task(pool.post("/p", b"{}", "waiting"))
    await queue.joined.wait()  # the new task waits for a slot
    assert len(pool._slot_waiters) == 1
    pool._release_slot()  # the request in flight ends ...
    assert pool._in_use == 1  # ... and its slot is the waiter's now
    later = asyncio.create_task(pool.post("/p", b"{}", "later"))
    assert await asyncio.gather(waiting, later) == [(200, b"{}")] * 2
    order = [r.split(b"X-Request-Id: ")[1].split(b"\r\n")[0] for r in server.requests]
    assert order == [b"waiting", b"later"] and pool._in_use == 0


async def test_refused_connection_is_an_os_error() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    pool = UpstreamPool(f"http://127.0.0.1:{port}", timeout=1.0, max_body=1024)
    with pytest.raises(OSError):
        await pool.post("/p", b"{}", "a")


async def test_unsafe_heads_are_refused_before_sending(serve: Callable[..., object]) -> None:
    server, pool = await serve(lambda request: answer(b"{}"))  # type: ignore[misc]
    # UpstreamError: the sidecar answers 502, never a 500 with a traceback.
    for path, request_id in (("/p\r\nX: 1", "a"), ("/p", "a\r\nX: 1"), ("/p q", "a"),
                             ("/p", "a\n")):
        with pytest.raises(UpstreamError):
            await pool.post(path, b"{}", request_id)
    assert server.connections == 0


def test_supports_plain_http_only() -> None:
    assert supports("http://127.0.0.1:8081")
    assert supports("http://model.local:8081/base")
    assert not supports("https://127.0.0.1:8081")
    assert not supports("http://user:pw@127.0.0.1:8081")
    assert not supports("http://127.0.0.1:8081/?q=1")

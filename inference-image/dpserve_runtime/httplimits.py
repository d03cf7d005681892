"""Connection limits of the HTTP ports (sidecar and model server): a header deadline,
connections per client, and closing a connection whose body was not read.

aiohttp closes an idle connection after its keep-alive timeout, counted from the connect or
from the previous response, but has no deadline for the request line and headers once the
first byte of them arrived *after* that count restarted, and no per-client connection limit:
a client trickling a header a byte a second held a model server connection indefinitely.

:class:`ConnectionGuard` wraps aiohttp's protocol (one :class:`_GuardedConnection` per TCP
connection, forwarding every callback) and

- closes a connection whose request headers are not complete within ``header_timeout``
  seconds of the connect or of the first byte of a later request;
- refuses (503 ``TooManyConnections``, then close) a connection beyond
  ``max_per_client`` open connections of one peer address (0: no limit);
- with :meth:`ConnectionGuard.middleware`: knows when headers are complete (the handler
  starts), and closes the connection after an answer whose request body was not read to the
  end; after a 408 (a body that did not arrive within the body deadline, which the handlers
  enforce) at once, so that aiohttp does not linger reading the rest of a trickled body.

The body deadline itself is each server's (it is rendered in the protocol's error shape):
the sidecar's ``clientTimeoutSeconds``, the model server's ``--body-timeout``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

from aiohttp import web

log = logging.getLogger(__name__)

ProtocolFactory = Callable[[], Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_REFUSAL_BODY = (b'{"reason":"TooManyConnections","message":"too many open connections from '
                 b'this client; retry later"}')
_REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            b"Retry-After: 1\r\nConnection: close\r\nContent-Length: "
            + str(len(_REFUSAL_BODY)).encode() + b"\r\n\r\n" + _REFUSAL_BODY)


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """``header_timeout``: seconds for a request line and headers; ``max_per_client``: open
    connections per peer address (0: unlimited); ``idle_timeout``: aiohttp's keep-alive
    between requests (longer than the sidecar's client pool keeps connections, 30 s)."""

    header_timeout: float = 10.0
    max_per_client: int = 256
    idle_timeout: float = 75.0

    def __post_init__(self) -> None:
        if not self.header_timeout > 0:
            raise ValueError(f"header timeout must be > 0, got {self.header_timeout}")
        if self.max_per_client < 0:
            raise ValueError(f"connections per client must be >= 0, got {self.max_per_client}")
        if not self.idle_timeout > 0:
            raise ValueError(f"idle timeout must be > 0, got {self.idle_timeout}")


class _GuardedConnection(asyncio.Protocol):
    """One connection: forwards to aiohttp's handler, enforces the header deadline."""

    __slots__ = ("_busy", "_client", "_guard", "_inner", "_pending", "_timer", "_transport")

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self._guard = guard
        self._inner = inner
        self._transport: asyncio.Transport | None = None
        self._client: str | None = None  # None: refused (never handed to aiohttp)
        self._timer: asyncio.TimerHandle | None = None
        self._busy = False  # a request's headers are complete and its handler runs
        self._pending = False  # bytes arrived while busy (a pipelined next request)

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports implement asyncio.Transport without subclassing it)
        self._transport = cast(asyncio.Transport, transport)
        client = _peer(transport)
        if not self._guard.admit(client):
            log.warning("refused a connection from %s: over %d open connections",
                        client, self._guard.limits.max_per_client)
            self._transport.write(_REFUSAL)
            self._transport.close()
            return
        self._client = client
        self._guard.connections[transport] = self
        self._inner.connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._client is None:
            return
        if self._busy:
            self._pending = True
        elif self._timer is None:
            self._arm()  # the first byte of the next request: its headers' deadline
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._client is None:
            return None
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        if self._client is None:
            return
        self._guard.release(self._client)
        if self._transport is not None:
            self._guard.connections.pop(self._transport, None)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._client is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._client is not None:
            self._inner.resume_writing()

    # -- request boundaries (from the middleware) ----------------------------------------

    def request_started(self) -> None:
        self._cancel()
        self._busy = True
        self._pending = False

    def request_finished(self) -> None:
        self._busy = False
        if self._pending:  # part of a next request is buffered: its deadline runs now
            self._pending = False
            self._arm()

    # -- the deadline ----------------------------------------------------------------------

    def _arm(self) -> None:
        self._cancel()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._guard.limits.header_timeout, self._expired)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        if self._busy or self._transport is None or self._transport.is_closing():
            return
        log.info("closed a connection from %s: request headers not complete within %gs",
                 self._client, self._guard.limits.header_timeout)
        self._guard.header_timeouts += 1
        self._transport.close()


def _peer(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return "local"  # a Unix socket or a transport without a peer address


class ConnectionGuard:
    """The limits of one listening server (see the module docstring)."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.connections: dict[asyncio.BaseTransport, _GuardedConnection] = {}
        self.open_by_client: Counter[str] = Counter()
        self.header_timeouts = 0  # connections closed for a late header (for tests, logs)
        self.refused = 0  # connections refused over the per-client limit

    def admit(self, client: str) -> bool:
        limit = self.limits.max_per_client
        if limit and self.open_by_client[client] >= limit:
            self.refused += 1
            return False
        self.open_by_client[client] += 1
        return True

    def release(self, client: str) -> None:
        self.open_by_client[client] -= 1
        if self.open_by_client[client] <= 0:
            del self.open_by_client[client]

    def wrap(self, factory: ProtocolFactory) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for ``loop.create_server`` around aiohttp's (``runner.server``)."""

        def make() -> asyncio.Protocol:
            return _GuardedConnection(self, factory())

        return make

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The outermost middleware: marks the request's headers complete and closes the
        connection after an answer that left the request body unread."""
        transport = request.transport
        connection = self.connections.get(transport) if transport is not None else None
        if connection is not None:
            connection.request_started()
        try:
            response = await handler(request)
            if request.body_exists and not request.content.is_eof():
                # The rest of the body is not wanted (a refused or timed-out request).
                response.force_close()
                if response.status == 408 and request.protocol is not None:
                    # A body past its deadline: answer and close now. aiohttp would
                    # otherwise linger (up to 10 s) reading what the client trickles.
                    await response.prepare(request)
                    await response.write_eof()
                    request.protocol.force_close()
            return response
        finally:
            if connection is not None:
                connection.request_finished()

    async def start(self, runner: web.BaseRunner, host: str, port: int) -> asyncio.Server:
        """Listen on ``host:port`` with ``runner``'s aiohttp server behind the guard
        (``runner.setup()`` done; close the returned server before ``runner.cleanup()``)."""
        assert runner.server is not None, "runner.setup() first"
        loop = asyncio.get_running_loop()
        return await loop.create_server(self.wrap(runner.server), host, port,
                                        reuse_address=True)


async def serve_until(app: web.Application, host: str, port: int, guard: ConnectionGuard,
                      stop: asyncio.Event, *, on_listening: Callable[[int], None] | None = None
                      ) -> None:
    """Serve ``app`` behind ``guard`` until ``stop`` is set (then close cleanly)."""
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=guard.limits.idle_timeout,
                           handle_signals=False)
    await runner.setup()
    server: asyncio.Server | None = None
    try:
        server = await guard.start(runner, host, port)
        if on_listening is not None:
            on_listening(server.sockets[0].getsockname()[1])
        await stop.wait()
    finally:
        if server is not None:
            server.close()
        await runner.cleanup()

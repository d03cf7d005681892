"""The sidecar's keep-alive HTTP/1.1 client for whole answers of the model server.

Every non-streamed request (``/v1/predict``, embeddings, v2 infer, non-streamed text) is one
POST to the model server on loopback and one whole answer back. aiohttp's client did that
at about half of the sidecar's CPU per request (bench/sidecar.py against an echo model: a
request object, header multidicts, a response object, a stream reader, tracing hooks and a
timer context per request). :class:`UpstreamPool` does only what this hop needs: one write
of a fixed request head and the body, one :class:`asyncio.Protocol` per connection that
collects the answer, connections reused LIFO. Streamed answers (SSE) and the readiness probe
still use aiohttp's client (``SidecarState.upstream``), as does an ``https`` upstream.

What it accepts is deliberately narrow; anything else fails the request (the caller answers
502) and closes the connection, so a response can never be taken for the next request's:

- a status line ``HTTP/1.1 NNN`` (or ``HTTP/1.0``, then not reused); an interim ``1xx``
  answer is refused (the request never asks for one);
- a header block within :data:`MAX_HEADER_BYTES`, ``CRLF`` line ends, no folded lines;
- a body framed by one ``Content-Length`` (repeats must agree) or ``Transfer-Encoding:
  chunked`` alone (never both), or, without either, by the end of the connection; within
  ``max_body`` bytes (:class:`UpstreamTooLarge` as soon as that is known);
- no ``Content-Encoding`` other than ``identity`` (the request asks for none: a compressed
  answer could not be scanned, and is never passed on unscanned);
- nothing after the answer: extra bytes, or bytes on an idle connection, close it.

A connection is reused only after a complete answer that allows it (no ``Connection:
close``) and with its request fully written; a cancelled or timed-out request closes it.
The timeout covers the whole request: waiting for a connection slot, connecting, writing
and reading the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections import deque
from typing import cast
from urllib.parse import urlsplit

MAX_HEADER_BYTES = 64 * 1024
# A chunk-size line (hex digits and extensions) longer than this is refused.
_MAX_CHUNK_LINE = 1024
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,15}")
# A request id safe in a request head (and in the audit log): the sidecar accepts only these.
REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_PATH = re.compile(r"/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*")
# Write the request head and body as one buffer up to this size (one send); larger bodies
# are handed over as two buffers, not copied.
_JOIN_LIMIT = 64 * 1024


class UpstreamError(Exception):
    """The model server was unreachable, disconnected, or answered outside the accepted
    HTTP/1.1 (see the module docstring). The caller reports it as 502."""


class UpstreamDisconnected(UpstreamError):
    """The connection closed before the answer was complete."""


class UpstreamProtocolViolation(UpstreamError):
    """The answer is not HTTP/1.1 as accepted here."""


class UpstreamTooLarge(UpstreamError):
    """The answer's body is over the size limit."""


_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _TRAILER, _EOF, _DONE = range(7)


class _Connection(asyncio.Protocol):
    """One TCP connection to the model server; collects one answer at a time."""

    __slots__ = ("_body", "_buffer", "_parts", "_pos", "_remaining", "_size", "_state",
                 "closed", "idle_since", "max_body", "reusable", "status", "transport",
                 "waiter")

    def __init__(self, max_body: int) -> None:
        self.max_body = max_body
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.reusable = True
        self.status = 0
        self._buffer = bytearray()
        self._state = _HEAD
        self._pos = 0  # where parsing goes on in _buffer
        self._remaining = 0  # bytes left of the body (_LENGTH) or of the chunk (_CHUNK_DATA)
        self._size = 0  # body bytes so far (chunked, until EOF)
        self._parts: list[bytes] = []
        self._body = b""

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports implement asyncio.Transport without subclassing it)
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done() or self._state == _DONE:
            # Bytes nobody asked for (idle, or after a complete answer): this connection can
            # no longer tell where an answer starts.
            self.reusable = False
            self.close()
            return
        self._buffer += data
        try:
            if self._parse():
                self._state = _DONE
                if len(self._buffer) > self._pos:
                    self.reusable = False  # bytes after the answer
                waiter.set_result((self.status, self._body))
        except UpstreamError as exc:
            self.reusable = False
            waiter.set_exception(exc)
            self.close()

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost finishes an answer read to EOF

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if self._state == _EOF and exc is None:
            self._state = _DONE
            waiter.set_result((self.status, b"".join(self._parts)))
        else:
            error = UpstreamDisconnected("the model server closed the connection")
            waiter.set_exception(error)
            if exc is not None:
                error.__cause__ = exc

    # -- requests --------------------------------------------------------------------------

    def start(self, waiter: asyncio.Future[tuple[int, bytes]]) -> None:
        self.waiter = waiter
        self._buffer = bytearray()
        self._state = _HEAD
        self._pos = 0
        self._size = 0
        self._parts = []
        self._body = b""

    def finished(self) -> None:
        """The answer was handed over: ready for the next request."""
        self.waiter = None
        self._buffer = bytearray()

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None and not self.closed:
            self.transport.close()

    # -- parsing ---------------------------------------------------------------------------

    def _parse(self) -> bool:
        """Consume what is buffered; True when the answer is complete."""
        if self._state == _HEAD:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_HEADER_BYTES:
                    raise UpstreamProtocolViolation("answer header over the size limit")
                return False
            if end > MAX_HEADER_BYTES:
                raise UpstreamProtocolViolation("answer header over the size limit")
            self._head(bytes(self._buffer[:end]))
            self._pos = end + 4
        if self._state == _LENGTH:
            end = self._pos + self._remaining
            if len(self._buffer) < end:
                return False
            self._body = bytes(self._buffer[self._pos:end])
            self._pos = end
            return True
        if self._state == _EOF:
            self._take(len(self._buffer) - self._pos)
            return False
        return self._chunks()

    def _take(self, count: int) -> None:
        """Move ``count`` body bytes from the buffer to the parts (chunked, until EOF)."""
        if not count:
            return
        self._size += count
        if self._size > self.max_body:
            raise UpstreamTooLarge("model answer over the size limit")
        self._parts.append(bytes(self._buffer[self._pos:self._pos + count]))
        del self._buffer[:self._pos + count]
        self._pos = 0

    def _head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        status_line = lines[0]
        version = status_line[:9]
        if version == b"HTTP/1.1 ":
            keep_alive = True
        elif version == b"HTTP/1.0 ":
            keep_alive = False
        else:
            raise UpstreamProtocolViolation("answer is not HTTP/1.1")
        code = status_line[9:12]
        if not (len(code) == 3 and code.isdigit()) or status_line[12:13] not in (b"", b" "):
            raise UpstreamProtocolViolation("malformed status line")
        status = int(code)
        if status < 200:
            raise UpstreamProtocolViolation(f"interim answer HTTP {status}")
        length: int | None = None
        chunked = False
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not _TOKEN.fullmatch(name) or b"\r" in value or b"\n" in value:
                # (also a folded line, which starts with white space)
                raise UpstreamProtocolViolation("malformed header line")
            name = name.lower()
            value = value.strip(b" \t")
            if name == b"content-length":
                if not value.isdigit() or len(value) > 18:
                    raise UpstreamProtocolViolation("malformed Content-Length")
                if length is not None and length != int(value):
                    raise UpstreamProtocolViolation("conflicting Content-Length")
                length = int(value)
            elif name == b"transfer-encoding":
                if chunked or value.lower() != b"chunked":
                    raise UpstreamProtocolViolation("unsupported Transfer-Encoding")
                chunked = True
            elif name == b"content-encoding":
                if value.lower() != b"identity":
                    raise UpstreamProtocolViolation("compressed answer (Content-Encoding)")
            elif name == b"connection":
                tokens = {t.strip(b" \t").lower() for t in value.split(b",")}
                if b"close" in tokens:
                    keep_alive = False
                elif b"keep-alive" in tokens and version == b"HTTP/1.0 ":
                    keep_alive = True
        if chunked and length is not None:
            raise UpstreamProtocolViolation("both Content-Length and Transfer-Encoding")
        self.status = status
        if not keep_alive:
            self.reusable = False
        if status in (204, 304):
            self._state, self._remaining = _LENGTH, 0
        elif chunked:
            self._state = _CHUNK_SIZE
        elif length is not None:
            if length > self.max_body:
                raise UpstreamTooLarge("model answer over the size limit")
            self._state, self._remaining = _LENGTH, length
        else:
            self._state = _EOF
            self.reusable = False

    def _chunks(self) -> bool:
        buffer = self._buffer
        while True:
            if self._state == _CHUNK_SIZE:
                end = buffer.find(b"\r\n", self._pos)
                if end < 0:
                    if len(buffer) - self._pos > _MAX_CHUNK_LINE:
                        raise UpstreamProtocolViolation("malformed chunk size")
                    return False
                size_field = bytes(buffer[self._pos:end]).split(b";", 1)[0].strip(b" \t")
                if not _HEX.fullmatch(size_field):
                    raise UpstreamProtocolViolation("malformed chunk size")
                size = int(size_field, 16)
                self._pos = end + 2
                if size == 0:
                    self._state = _TRAILER
                    continue
                if self._size + size > self.max_body:
                    raise UpstreamTooLarge("model answer over the size limit")
                self._state, self._remaining = _CHUNK_DATA, size
            elif self._state == _CHUNK_DATA:
                end = self._pos + self._remaining
                if len(buffer) < end + 2:
                    return False
                if buffer[end:end + 2] != b"\r\n":
                    raise UpstreamProtocolViolation("malformed chunk")
                self._take(self._remaining)
                self._pos += 2
                self._state = _CHUNK_SIZE
            else:  # _TRAILER: trailer lines (ignored) up to an empty line
                end = buffer.find(b"\r\n", self._pos)
                if end < 0:
                    if len(buffer) - self._pos > MAX_HEADER_BYTES:
                        raise UpstreamProtocolViolation("answer trailer over the size limit")
                    return False
                line_empty = end == self._pos
                self._pos = end + 2
                if line_empty:
                    self._body = b"".join(self._parts)
                    return True


class UpstreamPool:
    """Keep-alive connections to one ``http://host:port[/prefix]`` model server.

    ``limit`` connections at most in use (more requests wait for one, as aiohttp's
    ``TCPConnector(limit=...)``); an idle connection is reused within ``keepalive``
    seconds, shorter than the model server's own keep-alive (75 s), so that it is never
    reused just as the server closes it.
    """

    def __init__(self, base_url: str, *, timeout: float, max_body: int, limit: int = 256,
                 keepalive: float = 30.0) -> None:
        parts = urlsplit(base_url)
        if not supports(base_url):
            raise ValueError(f"not a plain http:// URL: {base_url}")
        assert parts.hostname is not None
        self.host = parts.hostname
        self.port = parts.port or 80
        self.prefix = parts.path.rstrip("/")
        self.timeout = timeout
        self.max_body = max_body
        self.limit = limit
        self.keepalive = keepalive
        host = f"[{self.host}]" if ":" in self.host else self.host
        self._host_line = f"Host: {host}:{self.port}\r\n"
        self._idle: deque[_Connection] = deque()
        self._in_use = 0
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    async def post(self, path: str, payload: bytes, request_id: str) -> tuple[int, bytes]:
        """POST ``payload`` (JSON) to ``path``: the answer's status and body.

        Raises :class:`TimeoutError` after ``timeout`` seconds in all, :class:`OSError` when
        no connection can be made, :class:`UpstreamError` (and its subclasses) otherwise.
        """
        if not _PATH.fullmatch(path) or not REQUEST_ID.fullmatch(request_id):
            raise UpstreamError("path or request id not safe in a request head")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        if self._in_use < self.limit and not self._slot_waiters:
            self._in_use += 1
        else:
            await self._wait_for_slot(loop, deadline)
        try:
            connection = self._idle_connection(loop.time()) or await self._connect(
                loop, deadline)
        except BaseException:
            self._release_slot()
            raise
        done = False
        try:
            transport = connection.transport
            assert transport is not None
            head = (f"POST {self.prefix}{path} HTTP/1.1\r\n{self._host_line}"
                    f"Content-Type: application/json\r\nX-Request-Id: {request_id}\r\n"
                    f"Content-Length: {len(payload)}\r\n\r\n").encode("ascii")
            waiter: asyncio.Future[tuple[int, bytes]] = loop.create_future()
            connection.start(waiter)
            if len(payload) <= _JOIN_LIMIT:
                transport.write(head + payload)
            else:
                transport.writelines((head, payload))
            timer = loop.call_at(deadline, _expire, waiter)
            try:
                answer = await waiter
            finally:
                timer.cancel()
            done = True
            return answer
        finally:
            self._release(connection, done, loop.time())

    async def close(self) -> None:
        """Close the idle connections; those in use close when their request ends."""
        self._closed = True
        while self._idle:
            self._idle.pop().close()

    # -- the pool ----------------------------------------------------------------------------

    def _idle_connection(self, now: float) -> _Connection | None:
        idle = self._idle
        while idle:
            connection = idle.pop()
            if connection.closed:
                continue
            if now - connection.idle_since > self.keepalive:
                # The most recent idle connection is too old: so are the ones below it.
                connection.close()
                while idle:
                    idle.pop().close()
                return None
            return connection
        return None

    async def _wait_for_slot(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        """Wait, in arrival order, until a finished request hands over its slot."""
        slot: asyncio.Future[None] = loop.create_future()
        self._slot_waiters.append(slot)
        try:
            async with asyncio.timeout_at(deadline):
                await slot
        except BaseException:
            if slot.done() and not slot.cancelled():
                self._release_slot()  # handed over just as this request gave up: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._slot_waiters.remove(slot)
            raise

    def _release_slot(self) -> None:
        """Hand the slot to the oldest waiter (new requests queue behind waiters, so none
        is starved), else free it."""
        while self._slot_waiters:
            slot = self._slot_waiters.popleft()
            if not slot.done():
                slot.set_result(None)
                return
        self._in_use -= 1

    async def _connect(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Connection:
        """A new connection by ``deadline`` (the caller holds a slot)."""
        async with asyncio.timeout_at(deadline):
            _, connection = await loop.create_connection(
                lambda: _Connection(self.max_body), self.host, self.port)
        transport = connection.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # One write per request: never held back waiting for the previous one's ACK.
            with contextlib.suppress(OSError):  # only latency: never worth a failed request
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return connection

    def _release(self, connection: _Connection, done: bool, now: float) -> None:
        transport = connection.transport
        if (done and connection.reusable and not connection.closed and not self._closed
                and transport is not None and not transport.is_closing()
                and transport.get_write_buffer_size() == 0):
            connection.finished()
            connection.idle_since = now
            idle = self._idle
            idle.append(connection)
            # The oldest idle connections go once past the keep-alive.
            while idle and (idle[0].closed or now - idle[0].idle_since > self.keepalive):
                idle.popleft().close()
        else:
            connection.close()
        self._release_slot()


def _expire(waiter: asyncio.Future[tuple[int, bytes]]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


def supports(base_url: str) -> bool:
    """Whether :class:`UpstreamPool` serves ``base_url``: plain ``http`` with a host, no
    credentials, query or fragment (else the sidecar uses aiohttp's client)."""
    parts = urlsplit(base_url)
    try:
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return False
    return (parts.scheme == "http" and bool(parts.hostname) and parts.username is None
            and parts.password is None and not parts.query and not parts.fragment
            and _PATH.fullmatch(parts.path or "/") is not None)

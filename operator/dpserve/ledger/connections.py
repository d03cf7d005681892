"""Connection limits of the ledger's listener: per-client connection caps and read timeouts.

The ledger shares its event loop with the controllers, so a client that opens connections
and never finishes a request must not be able to hold them (slowloris). Three limits:

- *headers*: a connection must deliver a request's complete headers within
  ``header_timeout_s`` of opening (or of its previous answer); aiohttp's keep-alive timer
  closes a connection still waiting for headers at that time, however slowly bytes trickle;
- *body*: the handler reads the body within ``body_timeout_s`` (:mod:`dpserve.ledger.wire`);
- *per client*: at most ``max_per_client`` open connections per peer address; more are
  closed as soon as they are accepted.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any, cast


class PeerLimiter:
    """Counts open connections per peer address and refuses those over the limit."""

    def __init__(self, max_per_client: int) -> None:
        self.max_per_client = max_per_client
        self.open: Counter[str] = Counter()
        self.refused = 0

    def factory(self, inner: Callable[[], asyncio.BaseProtocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory wrapping ``inner``'s protocols with the per-client check."""
        return lambda: _Limited(self, cast(asyncio.Protocol, inner()))


class _Limited(asyncio.Protocol):
    """Passes everything to the wrapped protocol once the connection is admitted."""

    def __init__(self, limiter: PeerLimiter, inner: asyncio.Protocol) -> None:
        self.limiter = limiter
        self.inner = inner
        self.peer: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer: Any = transport.get_extra_info("peername")
        host = str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)
        if self.limiter.open[host] >= self.limiter.max_per_client:
            self.limiter.refused += 1
            transport.close()  # never handed to aiohttp: nothing read, nothing answered
            return
        self.limiter.open[host] += 1
        self.peer = host
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is None:
            return
        self.limiter.open[self.peer] -= 1
        if self.limiter.open[self.peer] <= 0:
            del self.limiter.open[self.peer]
        self.peer = None
        self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.peer is not None:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.peer is not None else None

    def pause_writing(self) -> None:
        if self.peer is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.inner.resume_writing()

"""The ledger's HTTP handlers: ``POST /v1/leases``, health, readiness, metrics."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from dpserve.api.lease import LEASE_PATH, MAX_LEASE_BODY_BYTES, LeaseGrant
from dpserve.attestation.wire import PROOF_HEADER, TOKEN_HEADER
from dpserve.ledger.attestation import Evidence
from dpserve.ledger.metrics import LedgerMetrics
from dpserve.ledger.podcheck import Peer
from dpserve.ledger.store import NotFound, Store, Unavailable
from dpserve.ledger.wire import (
    LeaseFailure,
    body_timeout_response,
    error_response,
    read_body,
)

log = logging.getLogger("dpserve.ledger")

Lease = Callable[[bytes, str | None, Evidence, Peer | None], Awaitable[LeaseGrant]]


def build_app(
    lease: Lease,
    store: Store,
    metrics: LedgerMetrics,
    registry: CollectorRegistry,
    body_timeout_s: float,
) -> web.Application:
    """The aiohttp application answering the lease protocol with ``lease``."""
    handlers = _Handlers(lease, store, metrics, registry, body_timeout_s)
    app = web.Application(client_max_size=MAX_LEASE_BODY_BYTES * 4)
    app.router.add_post(LEASE_PATH, handlers.lease)
    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_get("/readyz", handlers.readyz)
    app.router.add_get("/metrics", handlers.metrics_page)
    return app


class _Handlers:
    def __init__(
        self,
        lease: Lease,
        store: Store,
        metrics: LedgerMetrics,
        registry: CollectorRegistry,
        body_timeout_s: float,
    ) -> None:
        self._lease = lease
        self.body_timeout_s = body_timeout_s
        self.store = store
        self.metrics = metrics
        self.registry = registry

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        try:
            await self.store.ping()
        except (Unavailable, NotFound) as exc:
            return error_response(LeaseFailure("Unavailable", f"API server not usable: {exc}"))
        return web.json_response({"status": "ready"})

    async def metrics_page(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def lease(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.body_timeout_s):
                body = await read_body(request)
        except TimeoutError:
            self.metrics.refusals.labels("BadRequest").inc()
            return body_timeout_response(self.body_timeout_s)
        except LeaseFailure as failure:
            self.metrics.refusals.labels(failure.error.reason).inc()
            return error_response(failure)
        try:
            evidence = Evidence(token=request.headers.get(TOKEN_HEADER),
                                proof=request.headers.get(PROOF_HEADER))
            grant = await self._lease(body, request.headers.get("Authorization"), evidence,
                                      _peer(request))
        except LeaseFailure as failure:
            self.metrics.refusals.labels(failure.error.reason).inc()
            return error_response(failure)
        except Exception:  # never crash on a request: fail closed, nothing granted
            log.exception("lease request failed")
            self.metrics.refusals.labels("Unavailable").inc()
            return error_response(LeaseFailure("Unavailable", "internal error; nothing granted"))
        self.metrics.grant_seconds.observe(time.perf_counter() - started)
        return web.json_response(grant.wire())


def _peer(request: web.Request) -> Peer | None:
    """The connection's two addresses (None without a socket: an in-memory test transport)."""
    transport = request.transport
    if transport is None:
        return None
    remote, local = transport.get_extra_info("peername"), transport.get_extra_info("sockname")
    if not isinstance(remote, tuple) or not isinstance(local, tuple):
        return None
    return Peer(remote=str(remote[0]), local=str(local[0]))

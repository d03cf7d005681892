"""What the tensor and the text model servers share: one inference thread pool, loading off
the event loop, the probe routes and the pool's shutdown with the app."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web
from aiohttp.typedefs import Middleware

from dpserve_runtime.httplimits import ConnectionGuard, ConnectionLimits


class ServingProcess(ABC):
    """Base of a model server: subclasses load their artifact in ``load_blocking`` and say
    in ``readyz`` whether they are ready."""

    def __init__(self, workers: int, thread_name_prefix: str, *,
                 limits: ConnectionLimits | None = None, body_timeout: float = 30.0) -> None:
        # Inference and noise run here, off the event loop (torch and OpenDP release the GIL).
        self.executor = ThreadPoolExecutor(max_workers=workers,
                                           thread_name_prefix=thread_name_prefix)
        # Header deadline and connections per client (enforced by serve()), body deadline.
        self.guard = ConnectionGuard(limits or ConnectionLimits())
        self.body_timeout = body_timeout

    @abstractmethod
    def load_blocking(self) -> None:
        """Load the artifact (runs in the pool, off the event loop)."""

    async def load(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self.executor, self.load_blocking)

    def new_app(self, middleware: Middleware, max_body_bytes: int) -> web.Application:
        """An app with the probes and the pool's shutdown; the caller adds its routes."""
        app = web.Application(middlewares=[self.guard.middleware, middleware],
                              client_max_size=max_body_bytes)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.on_cleanup.append(self._shutdown_executor)
        return app

    async def read_body(self, request: web.Request) -> bytes:
        """The request body, within ``body_timeout`` seconds of the handler's start
        (TimeoutError otherwise: the caller answers 408 in its protocol's shape)."""
        if request.content.is_eof():  # buffered already: nothing to wait on
            return await request.read()
        async with asyncio.timeout(self.body_timeout):
            return await request.read()

    async def _shutdown_executor(self, _app: web.Application) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    @abstractmethod
    async def readyz(self, request: web.Request) -> web.Response:
        """200 once the artifact is loaded and the server can answer, else 503."""

"""The local kubelet on its own event loop in a daemon thread, for synchronous callers."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

from dpserve_testkit.localkube.kubelet.runner import LocalKubelet

T = TypeVar("T")


class KubeletThread:
    """A :class:`LocalKubelet` on its own event loop in a daemon thread (for sync callers)."""

    def __init__(self, kubelet_factory: Callable[[], LocalKubelet]) -> None:
        self._factory = kubelet_factory
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready: Future[LocalKubelet] = Future()
        self._stopped = threading.Event()
        self._kubelet: LocalKubelet | None = None

    @property
    def kubelet(self) -> LocalKubelet:
        assert self._kubelet is not None, "not started"
        return self._kubelet

    def start(self) -> KubeletThread:
        self._thread = threading.Thread(target=self._main, name="local-kubelet", daemon=True)
        self._thread.start()
        self._kubelet = self._ready.result(timeout=30)
        return self

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            kubelet = self._factory()
            loop.run_until_complete(kubelet.start())
            self._ready.set_result(kubelet)
            loop.run_forever()
            loop.run_until_complete(kubelet.stop())
        except BaseException as exc:
            if not self._ready.done():
                self._ready.set_exception(exc)
            raise
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            self._stopped.set()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the kubelet and every process it started; waits for them to be gone."""
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 30.0) -> T:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=timeout_s)

    def call(self, fn: Callable[[LocalKubelet], T]) -> T:
        """``fn(kubelet)`` on the kubelet's loop (its state is only consistent there)."""
        async def wrapped() -> T:
            return fn(self.kubelet)

        return self.run(wrapped())

    def endpoints(self, namespace: str, deployment: str, port: int = 8080) -> list[str]:
        return self.call(lambda k: k.endpoints(namespace, deployment, port))

    def pod_summaries(self, namespace: str | None = None) -> list[dict[str, Any]]:
        """Name, owner, IP, readiness and restarts of each pod (a snapshot)."""
        return self.call(lambda k: [
            {"namespace": p.namespace, "name": p.name, "owner": p.owner_name,
             "kind": p.owner_kind, "ip": p.ip, "ready": p.ready,
             "restarts": sum(c.restarts for c in p.containers),
             "directory": str(p.directory)}
            for p in k.pods(namespace)
        ])

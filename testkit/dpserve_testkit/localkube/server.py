"""Serve LocalKube on 127.0.0.1 (in a background thread or in the caller's loop) + kubeconfig.

The kubeconfig points kopf, kubernetes_asyncio and kubectl at the emulator over plain HTTP,
as the admin (:data:`dpserve_testkit.localkube.emulator.ADMIN_TOKEN`, in ``system:masters``); with
``rbac=True`` the emulator authorises every other identity by the RBAC objects it stores.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import kmock
import yaml

from dpserve_testkit.localkube.emulator import ADMIN_TOKEN, LocalKube

T = TypeVar("T")


def dpserve_crds() -> list[dict[str, Any]]:
    from dpserve.api.crdgen import all_crds

    return list(all_crds().values())


def write_kubeconfig(path: str | Path, url: str, namespace: str = "default", *,
                     token: str = ADMIN_TOKEN, user: str = "localkube") -> Path:
    """A kubeconfig for ``url`` authenticating with ``token`` (default: the admin's)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "localkube", "cluster": {"server": url}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "localkube",
                      "context": {"cluster": "localkube", "user": user,
                                  "namespace": namespace}}],
        "current-context": "localkube",
        "preferences": {},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


@contextlib.asynccontextmanager
async def serving(
    kube: LocalKube | None = None, *, port: int = 0, kubeconfig: str | Path | None = None,
    install_crds: bool = True, rbac: bool = False, anonymous_admin: bool = False,
) -> AsyncIterator[tuple[LocalKube, str]]:
    """Serve ``kube`` in the running loop; yields (emulator, base URL).

    ``rbac``: authenticate and authorise requests (:meth:`LocalKube.enable_rbac`, with
    ``anonymous_admin`` for kubectl over plain HTTP).
    """
    kube = kube or LocalKube()
    if rbac:
        kube.enable_rbac(anonymous_admin=anonymous_admin)
    async with kube, kmock.Server(kube, host="127.0.0.1", port=port or None) as server:
        if install_crds:
            kube.install_crds(dpserve_crds())
        url = f"http://127.0.0.1:{server.port}"
        if kubeconfig is not None:
            write_kubeconfig(kubeconfig, url)
        yield kube, url


class LocalKubeServer:
    """The emulator on its own event loop in a daemon thread (usable from sync code too).

    Touch the emulator's state only through :meth:`call` / :meth:`run`, which execute on the
    emulator's loop: its operations are atomic only there.
    """

    def __init__(
        self, *, port: int = 0, kubeconfig: str | Path | None = None, install_crds: bool = True,
        kube: LocalKube | None = None, rbac: bool = False, anonymous_admin: bool = False,
    ) -> None:
        self._port = port
        self._rbac = rbac
        self._anonymous_admin = anonymous_admin
        self._kubeconfig = Path(kubeconfig) if kubeconfig is not None else None
        self._install_crds = install_crds
        self._kube = kube
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._ready: Future[tuple[LocalKube, str]] = Future()
        self.url = ""
        self._simulator: asyncio.Task[None] | None = None

    @property
    def kube(self) -> LocalKube:
        assert self._kube is not None, "not started"
        return self._kube

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def kubeconfig(self) -> Path:
        assert self._kubeconfig is not None, "started without a kubeconfig path"
        return self._kubeconfig

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._main, name="localkube", daemon=True)
        self._thread.start()
        self._kube, self.url = self._ready.result(timeout=30)
        return self

    def _main(self) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        try:
            async with serving(self._kube, port=self._port, kubeconfig=self._kubeconfig,
                               install_crds=self._install_crds, rbac=self._rbac,
                               anonymous_admin=self._anonymous_admin) as (kube, url):
                self._ready.set_result((kube, url))
                await self._stop.wait()
                if self._simulator is not None:
                    from dpserve_testkit.localkube.simulate import stop_simulator

                    await stop_simulator(self._simulator)
        except BaseException as exc:
            if not self._ready.done():
                self._ready.set_exception(exc)
            raise

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def call(self, fn: Callable[[LocalKube], T]) -> T:
        """Run ``fn(emulator)`` on the emulator's loop and return its result."""
        return self.run(self._wrap(fn))

    async def _wrap(self, fn: Callable[[LocalKube], T]) -> T:
        return fn(self.kube)

    def start_simulator(self) -> None:
        """Mark Deployments available as a kubelet would (see :mod:`.simulate`)."""
        from dpserve_testkit.localkube.simulate import start_simulator

        self._simulator = self.call(start_simulator)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def serve(
    port: int = 0, *, kubeconfig: str | Path | None = None, install_crds: bool = True,
    rbac: bool = False, anonymous_admin: bool = False,
) -> LocalKubeServer:
    """Start the emulator on 127.0.0.1:``port`` (0 = any free port) in a background thread.

    Writes an admin kubeconfig to ``kubeconfig`` when given; ``rbac``: authorise every other
    identity by the stored RBAC objects (``anonymous_admin``: requests without credentials,
    kubectl's over plain HTTP, are the admin's). Stop it with ``.stop()``.
    """
    return LocalKubeServer(port=port, kubeconfig=kubeconfig, install_crds=install_crds,
                           rbac=rbac, anonymous_admin=anonymous_admin).start()

"""Start the real operator process (``dpserve run``) against an emulator's kubeconfig.

Used by the integration tests, the reconcile benchmark, the end-to-end tests and the local
demo: the same command a pod runs, on loopback ports picked here.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from dpserve_testkit.crash import CrashMode
    from dpserve_testkit.localkube.server import LocalKubeServer

INFERENCE_IMAGE = "localhost/dpserve-inference:dev"
OPERATOR_NAMESPACE = "dpserve-system"


def service_account_kubeconfig(server: LocalKubeServer, path: Path, *, namespace: str,
                               service_account: str) -> Path:
    """A kubeconfig at ``path`` that authenticates as the ServiceAccount (a fresh token).

    What a pod of that ServiceAccount gets from its mounted token: with RBAC enabled on the
    emulator, the process using it can do exactly what the bindings grant.
    """
    from dpserve_testkit.localkube.server import write_kubeconfig

    token = secrets.token_urlsafe(32)
    server.call(lambda kube: kube.tokens.register(
        token, namespace=namespace, service_account=service_account))
    return write_kubeconfig(path, server.url, namespace, token=token,
                            user=f"system:serviceaccount:{namespace}:{service_account}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class OperatorPorts:
    liveness: int
    ledger: int
    metrics: int

    @classmethod
    def pick(cls) -> OperatorPorts:
        return cls(free_port(), free_port(), free_port())


class OperatorProcess:
    """``dpserve run --standalone`` bound to 127.0.0.1 on fixed ports; restartable.

    Each start writes its own log (``operator-<n>.log``) so a restart keeps the previous
    run's output. With ``peering`` it runs ``--peering NAME --priority P`` instead of
    ``--standalone`` (an active/standby pair, as the chart's hot standby).

    ``credentials``, when set, is called before each start and returns the kubeconfig to run
    under (e.g. :func:`service_account_kubeconfig` of the chart's ServiceAccount, once the
    chart's RBAC is applied); otherwise the process uses ``kubeconfig``.
    """

    def __init__(
        self, kubeconfig: Path, log_dir: Path, ports: OperatorPorts, *,
        env: Mapping[str, str] | None = None, namespaces: tuple[str, ...] = (),
        log_format: str = "json", peering: str | None = None, priority: int = 0,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.credentials: Callable[[], Path] | None = None
        self.peering = peering
        self.priority = priority
        self.log_dir = log_dir
        self.ports = ports
        self.env = dict(env or {})
        self.namespaces = namespaces
        self.log_format = log_format
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.log_path = log_dir / "operator-0.log"

    @property
    def ledger_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.ledger}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.metrics}/metrics"

    def start(self, extra_env: Mapping[str, str] | None = None,
              crash_after_persist: CrashMode | None = None) -> None:
        """Start a new operator process (``extra_env`` for this run only).

        ``crash_after_persist``: run it through :mod:`dpserve_testkit.crash`, whose ledger
        dies (``kill``) or freezes (``hang``) after persisting its first grant.
        """
        if self.running():
            raise RuntimeError("the operator is already running")
        self.starts += 1
        self.log_path = self.log_dir / f"operator-{self.starts}.log"
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
        kubeconfig = self.credentials() if self.credentials is not None else self.kubeconfig
        child_env.update({
            "KUBECONFIG": str(kubeconfig),
            "DPSERVE_BIND_ADDRESS": "127.0.0.1",
            "DPSERVE_LOG_FORMAT": self.log_format,
            "DPSERVE_LEDGER_URL": self.ledger_url,
            # The ledger on loopback speaks plain HTTP (no certificates in a local run).
            "DPSERVE_LEDGER_INSECURE": "true",
            "DPSERVE_INFERENCE_IMAGE": INFERENCE_IMAGE,
            "DPSERVE_OPERATOR_NAMESPACE": OPERATOR_NAMESPACE,
        })
        child_env.update(self.env)
        child_env.update(extra_env or {})
        mode = (["--peering", self.peering, "--priority", str(self.priority)]
                if self.peering else ["--standalone"])
        entry = (["dpserve.cli"] if crash_after_persist is None
                 else ["dpserve_testkit.crash", crash_after_persist, "operator"])
        args = [sys.executable, "-m", *entry, "run", *mode,
                "--liveness-port", str(self.ports.liveness),
                "--ledger-port", str(self.ports.ledger),
                "--metrics-port", str(self.ports.metrics)]
        for namespace in self.namespaces:
            args += ["--namespace", namespace]
        self.log_dir.mkdir(parents=True, exist_ok=True)
        handle: IO[bytes] = self.log_path.open("wb")
        try:
            self.process = subprocess.Popen(
                args, env=child_env, stdout=handle, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        finally:
            handle.close()

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.ports.liveness}/healthz", timeout=1
            ) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Until the liveness endpoint and the ledger port answer."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"the operator exited with {self.process.returncode}; "
                                   f"log {self.log_path}:\n{self.log_tail()}")
            if self.healthy() and _port_open(self.ports.ledger):
                return
            time.sleep(0.1)
        raise TimeoutError(f"the operator was not ready after {timeout_s:.0f}s; "
                           f"log {self.log_path}:\n{self.log_tail()}")

    def kill(self, sig: int = signal.SIGKILL) -> int:
        """Send ``sig`` (default SIGKILL: a crash, no cleanup) and reap the process."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return int(self.process.wait(30))

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout_s``; the exit code (None: never started)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return int(self.process.returncode)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def start_operator(
    kubeconfig: str | Path, log_path: str | Path, *, env: Mapping[str, str] | None = None,
    namespaces: tuple[str, ...] = (), log_format: str = "json",
) -> OperatorProcess:
    """``dpserve run --standalone`` on fresh loopback ports, started (not waited for).

    Its log goes next to ``log_path`` as ``operator-<n>.log`` (one file per start).
    """
    operator = OperatorProcess(
        Path(kubeconfig), Path(log_path).parent, OperatorPorts.pick(), env=env,
        namespaces=namespaces, log_format=log_format,
    )
    operator.start()
    return operator

"""The whole control plane and data plane on one machine, every part a real process.

- the embedded API (:class:`dpserve_testkit.localkube.LocalKubeServer`) on 127.0.0.1, with a
  kubeconfig that kopf, kubectl and the tests use;
- the operator, ``dpserve run --standalone`` as a child process (Kopf controllers and the
  ledger lease service), on fixed loopback ports so that a restart keeps the ledger URL the
  pods were given;
- the local kubelet (:mod:`dpserve_testkit.localkube.kubelet`) in a background thread, running the
  model server, the filter sidecar and the trainer of the Deployments and Jobs the operator
  creates as child processes or, with ``podman_image``, as containers of the built inference
  image (:class:`dpserve_testkit.localkube.kubelet.podman.PodmanRuntime`).

Used by ``dpserve-demo`` and the end-to-end tests. Every process started here is stopped by
:meth:`LocalStack.stop` (also on errors: use it as a context manager).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

from dpserve_testkit.localkube.client import Client
from dpserve_testkit.localkube.harness import (
    OPERATOR_NAMESPACE,
    OperatorPorts,
    OperatorProcess,
)
from dpserve_testkit.localkube.kubelet import KubeletThread, LocalKubelet, ServerTokens
from dpserve_testkit.localkube.kubelet.containers import ContainerRuntime
from dpserve_testkit.localkube.kubelet.podman import PodmanRuntime
from dpserve_testkit.localkube.server import LocalKubeServer

# Faster reaction than a cluster's defaults: a local run has seconds, not hours.
FAST_OPERATOR_ENV: Mapping[str, str] = {
    "DPSERVE_RETRAIN_BACKOFF_S": "2",
    "DPSERVE_RETRAIN_POLL_S": "1",
    "DPSERVE_CLUSTER_CACHE_S": "2",
}


class LocalStack:
    """Emulator + operator process + local kubelet under ``workdir``.

    ``workdir`` receives the kubeconfig, the operator logs, the pods' directories (logs,
    volumes, termination messages) and the PVC root (``pvc/<claim>``). ``podman_image``: run
    the pods' containers with podman, the operator rendering this inference image
    (``containers_conf``: podman's configuration file).
    """

    def __init__(
        self, workdir: Path, *, operator_env: Mapping[str, str] | None = None,
        namespaces: tuple[str, ...] = (), kubelet_poll_s: float = 0.25,
        api_port: int = 0, executable_dir: Path | None = None,
        podman_image: str | None = None, containers_conf: Path | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.kubeconfig = self.workdir / "kubeconfig"
        self.pvc_root = self.workdir / "pvc"
        self.namespaces = namespaces
        self.kubelet_poll_s = kubelet_poll_s
        self.api_port = api_port
        self.executable_dir = executable_dir  # the "image": where dpserve-server etc. live
        self.podman_image = podman_image
        self.containers_conf = containers_conf
        self.server: LocalKubeServer | None = None
        self.kubelet: KubeletThread | None = None
        image_env = {"DPSERVE_INFERENCE_IMAGE": podman_image} if podman_image else {}
        self.operator = OperatorProcess(
            self.kubeconfig, self.workdir / "logs", OperatorPorts.pick(),
            env={**FAST_OPERATOR_ENV, **image_env, **(operator_env or {})},
        )

    @property
    def url(self) -> str:
        assert self.server is not None, "not started"
        return self.server.url

    @property
    def api(self) -> Client:
        return Client(self.url)

    def start(self) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self.server = LocalKubeServer(port=self.api_port, kubeconfig=self.kubeconfig).start()
            self.api.create("/api/v1/namespaces", {"metadata": {"name": OPERATOR_NAMESPACE}})
            self.operator.start()
            server = self.server
            ledger_port = self.operator.ports.ledger

            def kubelet() -> LocalKubelet:
                runtime: ContainerRuntime | None = None
                if self.podman_image is not None:
                    runtime = PodmanRuntime(host_ports=[ledger_port],
                                            containers_conf=self.containers_conf)
                return LocalKubelet(
                    server.url, self.workdir / "pods", tokens=ServerTokens(server),
                    pvc_root=self.pvc_root, namespaces=list(self.namespaces),
                    host_ports=[ledger_port], poll_interval=self.kubelet_poll_s,
                    executable_dir=self.executable_dir, runtime=runtime,
                )

            self.kubelet = KubeletThread(kubelet).start()
            self.operator.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the kubelet (and every pod process), the operator and the emulator."""
        if self.kubelet is not None:
            self.kubelet.stop()
            self.kubelet = None
        self.operator.stop()
        if self.server is not None:
            self.server.stop()
            self.server = None

    def endpoints(self, namespace: str, model: str) -> list[str]:
        """The ready sidecar URLs of a model (what its Service routes to)."""
        assert self.kubelet is not None, "not started"
        return self.kubelet.endpoints(namespace, model)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

"""End to end with real processes: LocalKube over HTTP, the operator process (``dpserve run``
with its ledger), and the local kubelet running the model server, the filter sidecar and the
trainer of what the operator creates. The emulator enforces RBAC: the operator runs as the
chart's ServiceAccount under the chart's rendered (Cluster)Roles (``rbac_support``), the
tests act as the cluster admin.

Every scenario runs twice, once per container runtime of the kubelet (the ``e2e`` fixture's
parameter):
- ``process``: the containers as processes of this Python environment;
- ``podman``: the containers as real containers of the built inference image (podman, root;
  skipped where podman is missing, as the image tests are), with the manifests' mounts,
  users, read-only root, dropped capabilities and memory/CPU limits enforced.

One stack per runtime (starting it costs seconds); each test works in its own namespace.
Artifacts are trained once per session with ``dpserve-train`` on scikit-learn's digits
(offline) and copied into the stack's PVC root.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from dpserve.accounting import epsilon_spent
from dpserve.api.privacybudget import PrivacyBudgetStatus
from dpserve.ledger.events import spends
from dpserve_testkit.demo import artifacts, manifests
from dpserve_testkit.demo.stack import LocalStack
from dpserve_testkit.demo.traffic import QueryClient
from dpserve_testkit.localkube.client import Client
from dpserve_testkit.localkube.server import LocalKubeServer
from dpserve_testkit.localkube.waiting import wait_until
from podman_support import (
    CONTAINERS_CONF,
    INFERENCE_IMAGE,
    build_images,
    check_podman,
    podman,
)
from rbac_support import chart_values, operator_credentials

DELTA = "1e-5"
# Every class text carries contact details: the sidecar must never let them out raw.
PII_LABELS = artifacts.digit_labels(
    {i: ("(reviewed by ann.lee@example.com)" if i % 2 == 0 else "(call (212) 555-0143)")
     for i in range(10)}
)
PATE_TEACHERS = 10


@dataclass(frozen=True)
class Artifacts:
    dataset: Path
    pate: Path  # pate-ensemble, PATE_TEACHERS teachers, PII in its labels
    dpsgd: Path  # state-dict trained with DP-SGD
    dpsgd_report: artifacts.TrainReport
    X: npt.NDArray[np.float32]
    y: npt.NDArray[np.int64]


def _train(root: Path) -> Artifacts:
    dataset = artifacts.export_digits(root / "digits.npz")
    with ThreadPoolExecutor(max_workers=2) as pool:
        pate = pool.submit(
            artifacts.train_pate_ensemble, dataset, root / "pate", teachers=PATE_TEACHERS,
            epochs=10, batch_size=32, learning_rate=0.01, labels=PII_LABELS,
            log=root / "pate.log")
        dpsgd = pool.submit(
            artifacts.train_dpsgd_model, dataset, root / "dpsgd", target_epsilon=1.0,
            delta=float(DELTA), epochs=3, log=root / "dpsgd.log")
        pate.result()
        report = dpsgd.result()
    X, y = artifacts.load_queries(dataset)
    return Artifacts(dataset, root / "pate", root / "dpsgd", report, X, y)


class E2E:
    """The running stack plus helpers to set up and watch one test's models."""

    def __init__(self, stack: LocalStack, trained: Artifacts) -> None:
        self.stack = stack
        self.trained = trained
        self.api: Client = stack.api

    def namespace(self, prefix: str) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        self.api.create("/api/v1/namespaces", manifests.namespace(name))
        return name

    def install(self, source: Path, claim: str, path: str) -> str:
        """Copy an artifact or data set into the PVC root; returns its pvc:// URI."""
        target = self.stack.pvc_root / claim / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy2(source, target)
        return f"pvc://{claim}/{path}"

    def pm(self, ns: str, name: str) -> dict[str, Any]:
        return self.api.get(manifests.group_path(ns, "privatemodels", name))

    def pb(self, ns: str, name: str) -> dict[str, Any]:
        return self.api.get(manifests.group_path(ns, "privacybudgets", name))

    def ledger(self, ns: str, budget: str) -> tuple[PrivacyBudgetStatus, float]:
        """A budget's status and ε recomputed from its ledger entries (RDP, its δ)."""
        raw = self.pb(ns, budget)
        status = PrivacyBudgetStatus.model_validate(raw["status"])
        recomputed = epsilon_spent(spends(status.ledger), float(raw["spec"]["delta"]),
                                   raw["spec"].get("accountant", "rdp"))
        return status, recomputed

    def deployment(self, ns: str, name: str) -> dict[str, Any] | None:
        return self.api.find(f"/apis/apps/v1/namespaces/{ns}/deployments/{name}")

    def events(self, ns: str, involved: str) -> list[dict[str, Any]]:
        return [e for e in self.api.items(f"/api/v1/namespaces/{ns}/events")
                if e["involvedObject"].get("name") == involved]

    def apply(self, *bodies: dict[str, Any]) -> None:
        for body in bodies:
            ns = body["metadata"]["namespace"]
            plural = {"PrivacyBudget": "privacybudgets", "PrivateModel": "privatemodels",
                      "ErasureRequest": "erasurerequests"}[body["kind"]]
            self.api.create(manifests.group_path(ns, plural), body)

    def client(self, ns: str, model: str, start: int = 0) -> QueryClient:
        return QueryClient(lambda: self.stack.endpoints(ns, model), self.trained.X,
                           self.trained.y, start=start)

    def wait_serving(self, ns: str, model: str, timeout_s: float = 90.0) -> list[str]:
        endpoints: list[str] = wait_until(lambda: self.stack.endpoints(ns, model), timeout_s,
                                          what=lambda: f"a ready pod of {ns}/{model}\n"
                                          f"{self.diagnostics(ns)}")
        self.check_runtime(ns, model)
        return endpoints

    def check_runtime(self, ns: str, model: str) -> None:
        """The serving pods ran where the runtime says: as podman containers of the built
        image under the manifest's restrictions, or as local processes."""
        assert self.stack.kubelet is not None
        runs = self.stack.kubelet.call(lambda k: [
            (run.image, run.runtime_id) for p in k.pods(ns, model) for run in p.containers])
        assert runs, f"no pods of {ns}/{model}"
        if self.stack.podman_image is None:
            assert all(image == "local" and not rid for image, rid in runs), runs
            return
        for image, name in runs:
            assert image == self.stack.podman_image
            (info,) = json.loads(podman("container", "inspect", name).stdout)
            host = info["HostConfig"]
            assert info["Config"]["User"] == "65532:65532", info["Config"]["User"]
            assert host["ReadonlyRootfs"] is True
            assert host["Memory"] > 0 and host["NanoCpus"] > 0, host
            assert "no-new-privileges" in host["SecurityOpt"], host["SecurityOpt"]
            assert not info["EffectiveCaps"], info["EffectiveCaps"]

    def diagnostics(self, ns: str) -> str:
        """Operator log tail and the pods' container logs, for failure messages."""
        parts = [f"--- operator ({self.stack.operator.log_path}):",
                 self.stack.operator.log_tail(15)]
        pods = self.stack.workdir / "pods" / ns
        for log in sorted(pods.glob("*/*.log")) if pods.exists() else []:
            lines = log.read_text(errors="replace").splitlines()[-8:]
            parts += [f"--- {log.relative_to(pods)}:", *lines]
        return "\n".join(parts)


def under_chart_rbac(stack: LocalStack) -> Callable[[], Path]:
    """The operator's credentials in ``stack``: the chart's ServiceAccount and RBAC, with
    RBAC enforced from before the operator's first request."""
    def server() -> LocalKubeServer:
        assert stack.server is not None, "the stack's API server is not started"
        return stack.server

    return operator_credentials(server, stack.workdir / "operator-kubeconfig",
                                values=chart_values(namespaces=stack.namespaces),
                                enable_rbac=True)


def granted_queries(status: PrivacyBudgetStatus) -> int:
    """Queries the ledger debited (granted in leases), all consumers together."""
    return sum(entry.count for entry in status.ledger if entry.kind == "query")


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Artifacts:
    return _train(tmp_path_factory.mktemp("artifacts"))


RUNTIMES = [
    pytest.param("process", id="process"),
    pytest.param("podman", id="podman", marks=[
        pytest.mark.podman,
        # The first test may build the images (minutes without the layer cache).
        pytest.mark.timeout(1800),
    ]),
]


@pytest.fixture(scope="session", params=RUNTIMES)
def e2e(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
        trained: Artifacts) -> Iterator[E2E]:
    """The stack on one container runtime."""
    podman_image = None
    if request.param == "podman":
        check_podman()  # skipped where podman cannot run; a failure in CI after ci-setup.sh
        build_images(timeout=1500)  # seconds when the images are current (layer cache)
        podman_image = INFERENCE_IMAGE
    stack = LocalStack(tmp_path_factory.mktemp(f"stack-{request.param}"),
                       podman_image=podman_image, containers_conf=CONTAINERS_CONF)
    stack.operator.credentials = under_chart_rbac(stack)
    stack.start()
    try:
        yield E2E(stack, trained)
    finally:
        stack.stop()

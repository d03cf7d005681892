"""The real operator process (``dpserve run``) against LocalKube on loopback.

One emulator and one operator per test module; each test works in its own namespace. The
emulator enforces RBAC and the operator runs as the chart's ServiceAccount with the chart's
rendered (Cluster)Roles (``rbac_support``): a call the chart does not grant fails with 403
here as on a cluster. The tests themselves act as the cluster admin.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from dpserve.resources.access import ACCESS, Res
from dpserve_testkit.localkube import LocalKubeServer, serve
from dpserve_testkit.localkube.client import Client
from dpserve_testkit.localkube.harness import OperatorPorts, OperatorProcess
from dpserve_testkit.localkube.waiting import wait_until as _wait_until
from rbac_support import chart_values, operator_credentials

T = TypeVar("T")
RESOURCES: dict[str, Res] = {a.res.plural: a.res for a in ACCESS}
GROUP = "/apis/dpserve.io/v1alpha1/namespaces/{ns}"


class Cluster:
    def __init__(self, server: LocalKubeServer, operator: OperatorProcess) -> None:
        self.server = server
        self.operator = operator
        self.api = Client(server.url)
        self._namespaces = 0

    def namespace(self) -> str:
        self._namespaces += 1
        name = f"op{self._namespaces}-{uuid.uuid4().hex[:6]}"
        self.api.create("/api/v1/namespaces", {"metadata": {"name": name}})
        return name

    def pm(self, ns: str, name: str = "") -> str:
        return GROUP.format(ns=ns) + "/privatemodels" + (f"/{name}" if name else "")

    def pb(self, ns: str, name: str = "") -> str:
        return GROUP.format(ns=ns) + "/privacybudgets" + (f"/{name}" if name else "")

    def path(self, ns: str, plural: str, name: str = "") -> str:
        """The URL of an owned kind's objects (or pods, events) by plural, from the table."""
        return RESOURCES[plural].path(ns, name or None)

    def events(self, ns: str, involved: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.api.items(f"/api/v1/namespaces/{ns}/events")
                if involved is None or e["involvedObject"].get("name") == involved]

    def wait_event(self, ns: str, involved: str, reason: str) -> dict[str, Any]:
        """The first Event with this reason about ``involved``, once it is there (Kopf posts
        Events after the status patch that carries the same news, so read them by waiting)."""
        return wait_until(lambda: next((e for e in self.events(ns, involved)
                                        if e["reason"] == reason), None),
                          what=f"{reason} Event on {involved}")

    def lease(self, token: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(
            self.operator.ledger_url + "/v1/leases", data=json.dumps(body).encode(),
            method="POST", headers={"Authorization": f"Bearer {token}",
                                    "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())


def wait_until(check: Callable[[], T | None], timeout_s: float = 15.0,
               interval_s: float = 0.1, what: str = "condition") -> T:
    result: T = _wait_until(check, timeout_s, interval_s, what)
    return result


def condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any] | None:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond["type"] == kind:
            return dict(cond)
    return None


def budget_body(name: str, epsilon: str = "10", delta: str = "1e-6") -> dict[str, Any]:
    return {"apiVersion": "dpserve.io/v1alpha1", "kind": "PrivacyBudget",
            "metadata": {"name": name}, "spec": {"epsilon": epsilon, "delta": delta}}


def model_body(name: str, budget: str, *, replicas: int = 1, profile: str = "none",
               required: bool = False, policy: str = "ScaleToZero",
               mechanism: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "dpserve.io/v1alpha1", "kind": "PrivateModel",
        "metadata": {"name": name},
        "spec": {
            "budgetRef": {"name": budget},
            "model": {"artifact": f"pvc://models/{name}/v1", "format": "pate-ensemble"},
            "serving": {"replicas": replicas, "mechanism": mechanism or {
                "type": "gaussian", "noiseMultiplier": "1", "clipNorm": "1",
                "sensitivity": "1"}},
            "confidential": {"profile": profile, "required": required},
            "onBudgetExhausted": policy,
        },
    }


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    workdir: Path = tmp_path_factory.mktemp("operator")
    # anonymous_admin: kubectl sends no credentials over plain HTTP (test_operator_examples).
    server = serve(kubeconfig=workdir / "kubeconfig", rbac=True, anonymous_admin=True)
    server.start_simulator()
    operator = OperatorProcess(server.kubeconfig, workdir, OperatorPorts.pick())
    operator.credentials = operator_credentials(server, workdir / "operator-kubeconfig",
                                                values=chart_values())
    try:
        operator.start()
        operator.wait_ready()
        yield Cluster(server, operator)
    finally:
        code = operator.stop()
        server.stop()
        # The operator must shut down cleanly on SIGTERM (no crash during the tests).
        assert code == 0, operator.log_tail()

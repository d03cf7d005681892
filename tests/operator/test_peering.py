"""The chart's hot standby: two ``dpserve run --peering`` processes, one active.

Kopf peering over LocalKube with the peering CRDs the chart ships (its kopf-peering
subchart): the lower-priority replica pauses while the active one's heartbeat is fresh and
takes over once the active one is gone — at once when it stops cleanly (it withdraws its
record), after the heartbeat's lifetime when it is SIGKILLed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_support import Cluster, budget_body, model_body, wait_until

from dpserve_testkit.localkube import LocalKubeServer, serve
from dpserve_testkit.localkube.client import Client
from dpserve_testkit.localkube.harness import OperatorPorts, OperatorProcess

REPO = Path(__file__).resolve().parents[2]
PEERING_CRDS = REPO / "charts/dpserve/charts/kopf-peering/crds/kopf-peering.yaml"
PEERING = "dpserve"
LIFETIME_S = 6
# Kopf starts a peered operator paused and logs only when it resumes; a paused one runs no
# handler at all (the active one handles the emulator's Node right away).
RESUMED = "Resuming operations after the pause"
HANDLED = "Handler '"

pytestmark = pytest.mark.slow


@dataclass
class Pair:
    server: LocalKubeServer
    api: Client
    active: OperatorProcess
    standby: OperatorProcess

    def log(self, operator: OperatorProcess) -> str:
        return operator.log_path.read_text(encoding="utf-8", errors="replace")

    def peers(self) -> dict[str, Any]:
        obj = self.api.get(f"/apis/kopf.dev/v1/clusterkopfpeerings/{PEERING}")
        return dict(obj.get("status") or {})


@pytest.fixture()
def pair(tmp_path: Path) -> Iterator[Pair]:
    server = serve(kubeconfig=tmp_path / "kubeconfig")
    server.start_simulator()
    api = Client(server.url)
    for crd in yaml.safe_load_all(PEERING_CRDS.read_text("utf-8")):
        api.create("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
    # What the chart's templates/peering.yaml renders for a cluster-wide install.
    api.create("/apis/kopf.dev/v1/clusterkopfpeerings",
               {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering",
                "metadata": {"name": PEERING}})
    env = {"DPSERVE_PEERING_LIFETIME_S": str(LIFETIME_S)}
    active, standby = (
        OperatorProcess(server.kubeconfig, tmp_path / name, OperatorPorts.pick(), env=env,
                        peering=PEERING, priority=priority)
        for name, priority in (("active", 100), ("standby", 50))
    )
    try:
        active.start()
        active.wait_ready()
        standby.start()
        standby.wait_ready()
        yield Pair(server, api, active, standby)
    finally:
        for operator in (active, standby):
            operator.stop()
        server.stop()


def deployment(cluster: Cluster, ns: str, name: str) -> dict[str, Any] | None:
    return cluster.api.find(cluster.path(ns, "deployments", f"{name}"))


def test_standby_pauses_and_takes_over_when_the_active_replica_dies(pair: Pair) -> None:
    cluster = Cluster(pair.server, pair.active)
    wait_until(lambda: len(pair.peers()) == 2, what="both replicas in the peering object")
    assert {p["priority"] for p in pair.peers().values()} == {100, 50}

    ns = cluster.namespace()
    cluster.api.create(cluster.pb(ns), budget_body("b"))
    cluster.api.create(cluster.pm(ns), model_body("first", "b"))
    wait_until(lambda: deployment(cluster, ns, "first"), what="the active replica's Deployment")
    assert HANDLED in pair.log(pair.active)
    standby_log = pair.log(pair.standby)
    assert RESUMED not in standby_log and HANDLED not in standby_log, standby_log

    # A crash: no goodbye in the peering object, so the standby waits out the heartbeat.
    assert pair.active.kill() == -9
    killed = time.monotonic()
    cluster.api.create(cluster.pm(ns), model_body("second", "b"))
    wait_until(lambda: deployment(cluster, ns, "second"), timeout_s=LIFETIME_S + 30,
               what="the standby's Deployment after the take-over")
    took = time.monotonic() - killed
    assert RESUMED in pair.log(pair.standby)
    # Not before the dead replica's record expired (it kept serving until the kill).
    assert took >= LIFETIME_S - 2, took
    # The standby now also owns what the dead replica had created: an edit is carried out.
    cluster.api.merge(cluster.pm(ns, "first"), {"spec": {"serving": {"replicas": 2}}})
    wait_until(lambda: (deployment(cluster, ns, "first") or {})["spec"]["replicas"] == 2,
               what="the first model's Deployment scaled by the standby")


def test_a_cleanly_stopped_active_replica_hands_over_at_once(pair: Pair) -> None:
    wait_until(lambda: len(pair.peers()) == 2, what="both replicas in the peering object")
    wait_until(lambda: HANDLED in pair.log(pair.active), what="the active replica working")
    assert HANDLED not in pair.log(pair.standby)
    assert pair.active.stop() == 0
    # A clean stop says goodbye: its record has left the peering object when the process
    # is gone, so the standby does not wait out the heartbeat's lifetime (the crash test
    # above shows the wait when there is no goodbye).
    assert len(pair.peers()) == 1, pair.peers()
    wait_until(lambda: RESUMED in pair.log(pair.standby), timeout_s=LIFETIME_S + 30,
               what="the standby resuming")

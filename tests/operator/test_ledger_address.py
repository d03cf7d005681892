"""Serving pods reach the ledger without DNS: the operator (namespaced mode, the chart's
Roles) reads the ledger Service in its own namespace, pins its ClusterIP in the pods'
hostAliases, and re-pins a new one; without the Service the model says so and nothing is
rendered. The NetworkPolicy has no DNS rule."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from operator_support import Cluster, budget_body, condition, model_body, wait_until

from dpserve_testkit.localkube import serve
from dpserve_testkit.localkube.harness import OPERATOR_NAMESPACE, OperatorPorts, OperatorProcess
from rbac_support import chart_values, operator_credentials

WATCHED = "ledger-addr"
HOST = f"dpserve-ledger.{OPERATOR_NAMESPACE}.svc"
SERVICES = f"/api/v1/namespaces/{OPERATOR_NAMESPACE}/services"


@pytest.fixture(scope="module")
def pinned(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """An operator whose ledger URL names the ledger Service (as the chart's does)."""
    workdir: Path = tmp_path_factory.mktemp("ledger-address")
    server = serve(kubeconfig=workdir / "kubeconfig", rbac=True, anonymous_admin=True)
    server.start_simulator()
    operator = OperatorProcess(server.kubeconfig, workdir, OperatorPorts.pick(),
                               namespaces=(WATCHED,))
    operator.env.update({"DPSERVE_LEDGER_URL": f"http://{HOST}:{operator.ports.ledger}",
                         "DPSERVE_CLUSTER_CACHE_S": "1"})
    cluster = Cluster(server, operator)
    for namespace in (WATCHED, OPERATOR_NAMESPACE):
        if not any(n["metadata"]["name"] == namespace
                   for n in cluster.api.items("/api/v1/namespaces")):
            cluster.api.create("/api/v1/namespaces", {"metadata": {"name": namespace}})
    operator.credentials = operator_credentials(
        server, workdir / "operator-kubeconfig", values=chart_values(namespaces=(WATCHED,)))
    try:
        operator.start()
        operator.wait_ready()
        yield cluster
    finally:
        code = operator.stop()
        server.stop()
        assert code == 0, operator.log_tail()


def _service(cluster_ip: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"ports": [{"name": "ledger", "port": 8443}],
                            "selector": {"app.kubernetes.io/name": "dpserve"}}
    if cluster_ip:
        spec["clusterIP"] = cluster_ip
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "dpserve-ledger"}, "spec": spec}


def _aliases(cluster: Cluster) -> list[dict[str, Any]] | None:
    found = cluster.api.items(cluster.path(WATCHED, "deployments"))
    return found[0]["spec"]["template"]["spec"].get("hostAliases") if found else None


def test_the_ledger_service_is_pinned_and_followed(pinned: Cluster) -> None:
    api = pinned.api
    api.create(pinned.pb(WATCHED), budget_body("b"))
    api.create(pinned.pm(WATCHED), model_body("m", "b"))

    # No Service yet: a condition, an unchanged (here: absent) Deployment, never DNS.
    waiting = wait_until(lambda: (c := condition(api.get(pinned.pm(WATCHED, "m")), "Ready"))
                         and c["reason"] == "LedgerServiceUnavailable" and c,
                         what="Ready LedgerServiceUnavailable")
    assert f"{OPERATOR_NAMESPACE}/dpserve-ledger does not exist" in waiting["message"]
    assert api.items(pinned.path(WATCHED, "deployments")) == []

    created = api.create(SERVICES, _service())
    first = created["spec"]["clusterIP"]
    assert _aliases_eventually(pinned, first) == [{"ip": first, "hostnames": [HOST]}]
    (policy,) = api.items(pinned.path(WATCHED, "networkpolicies"))
    ports = [p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]]
    assert 53 not in ports

    # Recreated with another address: the pods' template follows (a roll), unprompted.
    api.delete(f"{SERVICES}/dpserve-ledger")
    moved = "10.96.200.7"
    assert moved != first
    api.create(SERVICES, _service(moved))
    assert _aliases_eventually(pinned, moved) == [{"ip": moved, "hostnames": [HOST]}]


def _aliases_eventually(cluster: Cluster, ip: str) -> list[dict[str, Any]]:
    return wait_until(lambda: (a := _aliases(cluster)) and a[0]["ip"] == ip and a,
                      what=f"hostAliases with {ip}")

"""Serving pods reach the ledger without DNS: the ledger host name pinned to its Service's
ClusterIPs in hostAliases, and a NetworkPolicy with no port 53 (resources/ledgerhost.py)."""

from __future__ import annotations

from typing import Any

import pytest

from dpserve.resources.deployment import build_deployment
from dpserve.resources.ledgerhost import classify, host_aliases, service_ips
from dpserve.resources.networkpolicy import build_networkpolicy

OPS = "dpserve-system"


@pytest.mark.parametrize(("url", "kind", "service"), [
    ("https://dpserve-ledger.dpserve-system.svc:8443", "service", "dpserve-ledger"),
    ("https://dpserve-ledger.dpserve-system.svc.cluster.local:8443", "service",
     "dpserve-ledger"),
    ("https://DPSERVE-LEDGER.dpserve-system.svc.", "service", "dpserve-ledger"),
    ("https://10.96.0.7:8443", "address", None),
    ("https://[fd00::7]:8443", "address", None),
    ("http://localhost:8443", "address", None),
    ("https://ledger.other.svc:8443", "external", None),  # not the operator's namespace
    ("https://ledger.example.org", "external", None),
    ("https://dpserve-ledger.dpserve-system", "external", None),
])
def test_ledger_hosts_are_classified(url: str, kind: str, service: str | None) -> None:
    host = classify(url, OPS)
    assert (host.kind, host.service) == (kind, service)
    assert host.namespace == (OPS if kind == "service" else None)


def _service(**spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "dpserve-ledger", "namespace": OPS}, "spec": spec}


def test_service_ips_and_why_not() -> None:
    assert service_ips(_service(clusterIP="10.96.0.7", clusterIPs=["10.96.0.7", "fd00::7"]),
                       "dpserve-ledger", OPS) == (("10.96.0.7", "fd00::7"), None)
    assert service_ips(_service(clusterIP="10.96.0.7"), "dpserve-ledger", OPS)[0] == (
        "10.96.0.7",)
    for service, says in ((None, "does not exist"),
                          (_service(clusterIP="None", clusterIPs=["None"]), "no ClusterIP"),
                          (_service(), "no ClusterIP"),
                          (_service(type="ExternalName", externalName="l.example.org"),
                           "ExternalName")):
        ips, problem = service_ips(service, "dpserve-ledger", OPS)
        assert ips == ()
        assert problem is not None and says in problem
        assert "dpserve-system/dpserve-ledger" in problem


def test_pinned_ledger_renders_host_aliases(make_model, make_ctx) -> None:
    model = make_model()
    url = "https://dpserve-ledger.dpserve-system.svc:8443"
    ctx = make_ctx(model, ledger_url=url, ledger_ips=("10.96.0.7", "fd00::7"))
    pod = build_deployment(model, ctx)["spec"]["template"]["spec"]
    # The sidecar connects to the name (TLS verifies it) without a DNS query.
    assert pod["hostAliases"] == [
        {"ip": "10.96.0.7", "hostnames": ["dpserve-ledger.dpserve-system.svc"]},
        {"ip": "fd00::7", "hostnames": ["dpserve-ledger.dpserve-system.svc"]},
    ]
    assert host_aliases("h", ("10.0.0.1",)) == [{"ip": "10.0.0.1", "hostnames": ["h"]}]
    ports = [p for rule in build_networkpolicy(model, ctx)["spec"]["egress"]
             for p in rule["ports"]]
    assert ports == [{"protocol": "TCP", "port": 8443}]  # no port 53, UDP or TCP


def test_a_changed_cluster_ip_changes_the_pod_template(make_model, make_ctx) -> None:
    """The template is what a Deployment rolls on: a new address rolls the pods."""
    model = make_model()
    url = "https://dpserve-ledger.dpserve-system.svc:8443"
    first = build_deployment(model, make_ctx(model, ledger_url=url, ledger_ips=("10.96.0.7",)))
    moved = build_deployment(model, make_ctx(model, ledger_url=url, ledger_ips=("10.96.0.8",)))
    assert first["spec"]["template"] != moved["spec"]["template"]


def test_no_host_aliases_for_an_address(make_model, make_ctx) -> None:
    model = make_model()
    pod = build_deployment(model, make_ctx(model, ledger_url="https://10.96.0.7:8443"))
    assert "hostAliases" not in pod["spec"]["template"]["spec"]


def test_ledger_ips_must_be_addresses(make_model, make_ctx) -> None:
    model = make_model()
    with pytest.raises(ValueError, match="not IP addresses"):
        make_ctx(model, ledger_ips=("dpserve-ledger",))

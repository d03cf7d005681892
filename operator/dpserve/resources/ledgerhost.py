"""How a serving pod finds the ledger without DNS: the pure half.

The sidecar is the only process in a serving pod that resolves a name (the model server
loads its artifact from a volume, offline; the attestation agent is on loopback), and the
name it resolves is the ledger URL's host. DNS egress would let *every* container of the pod
(the NetworkPolicy is pod-scoped) resolve, and exfiltrate through, any name. So the operator
resolves the ledger's Service itself (its ClusterIPs, read from the API) and the serving pod
gets ``hostAliases`` mapping the ledger host name to those addresses: the sidecar connects
without a DNS query and still verifies the TLS certificate against the *name*.

Three kinds of ledger host:

- an IP address or ``localhost``: nothing to resolve;
- ``<service>.<operator namespace>.svc[.<cluster domain>]``: the ledger's Service, pinned by
  ``hostAliases``;
- anything else (a name outside the cluster, a Service of another namespace): only with DNS
  egress, an explicit operator setting (``DPSERVE_SERVING_DNS_EGRESS``).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from dpserve.resources.names import DNS1123_LABEL

HostKind = Literal["address", "service", "external"]
LOOPBACK_NAMES = ("localhost",)


@dataclass(frozen=True)
class LedgerHost:
    host: str  # as the URL spells it, lower case, without brackets
    kind: HostKind
    service: str | None = None  # kind "service": the Service's name ...
    namespace: str | None = None  # ... and namespace


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def classify(ledger_url: str, operator_namespace: str) -> LedgerHost:
    """What the ledger URL's host is, for a serving pod in another namespace.

    A Service of another namespace is "external": the operator may read Services only in its
    own namespace, and the ledger runs there (the NetworkPolicy allows the operator's pods).
    """
    host = (urlsplit(ledger_url).hostname or "").lower()
    if is_ip(host) or host in LOOPBACK_NAMES:
        return LedgerHost(host, "address")
    labels = host.rstrip(".").split(".")
    if (len(labels) >= 3 and labels[2] == "svc" and labels[1] == operator_namespace
            and DNS1123_LABEL.match(labels[0])):
        return LedgerHost(host, "service", service=labels[0], namespace=labels[1])
    return LedgerHost(host, "external")


def service_ips(service: dict[str, Any] | None, name: str, namespace: str
                ) -> tuple[tuple[str, ...], str | None]:
    """The ClusterIPs of the ledger's Service, or (), and why they cannot be used."""
    where = f"the ledger Service {namespace}/{name}"
    if service is None:
        return (), (f"{where} does not exist: serving pods have no DNS and reach the ledger "
                    "through its ClusterIP")
    spec = service.get("spec") or {}
    if spec.get("type") == "ExternalName":
        return (), (f"{where} is an ExternalName Service (no ClusterIP to pin); point "
                    "DPSERVE_LEDGER_URL at a ClusterIP Service or set "
                    "DPSERVE_SERVING_DNS_EGRESS=true with an external ledger URL")
    found = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
    ips = tuple(ip for ip in found if isinstance(ip, str) and is_ip(ip))
    if not ips:
        return (), (f"{where} has no ClusterIP (headless or not yet allocated): serving pods "
                    "reach the ledger through its ClusterIP")
    return ips, None


def host_aliases(host: str, ips: tuple[str, ...]) -> list[dict[str, Any]]:
    """The pod's ``hostAliases``: each address of the ledger Service under its host name."""
    return [{"ip": ip, "hostnames": [host]} for ip in ips]

"""Service ClusterIPs, allocated as the API server does (LocalKube).

The operator pins the ledger Service's ClusterIP in serving pods (they have no DNS), so a
Service created here gets one: from 10.96.0.0/16 unless the body names one, none for a
headless (``clusterIP: None``) or ``ExternalName`` Service; an update that leaves the fields
out keeps them (they are immutable). Nothing routes to these addresses: the process kubelet
resolves Service names to ready endpoints (``kubelet/podnet``) and does not follow
``hostAliases``; the podman kubelet maps a ClusterIP in ``hostAliases`` to its userspace proxy
for it (``kubelet/serviceproxy``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

import kmock

SERVICES = kmock.resource("", "v1", "services")
RANGE = ipaddress.ip_network("10.96.0.0/16")
_ALLOCATED = ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy")


def allocate(service: dict[str, Any], existing: Iterable[dict[str, Any]]) -> None:
    """Give ``service`` (a body being created) a free ClusterIP, in place."""
    spec = service.setdefault("spec", {})
    if spec.get("type") == "ExternalName" or spec.get("clusterIP") == "None":
        return
    if spec.get("clusterIP"):
        spec.setdefault("clusterIPs", [spec["clusterIP"]])
        return
    taken = {ip for s in existing for ip in ((s.get("spec") or {}).get("clusterIPs") or [])}
    # .10 upwards: the API server reserves the range's first addresses (kubernetes, DNS).
    for address in RANGE.hosts():
        if int(address) - int(RANGE.network_address) >= 10 and str(address) not in taken:
            spec.update(clusterIP=str(address), clusterIPs=[str(address)],
                        ipFamilies=["IPv4"], ipFamilyPolicy="SingleStack")
            return
    raise RuntimeError("LocalKube: the Service ClusterIP range is exhausted")


def keep(new: dict[str, Any], old: dict[str, Any]) -> None:
    """An update that leaves the allocated fields out keeps them, in place."""
    old_spec = old.get("spec") or {}
    spec = new.setdefault("spec", {})
    for name in _ALLOCATED:
        if name in old_spec and not spec.get(name):
            spec[name] = old_spec[name]

"""BuildContext: everything a builder needs besides the PrivateModel itself.

The controller decides (replicas, version after a retrain, confidential fallback) and the
builders render; nothing here reads a clock, the network or the API.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from dpserve.api.privatemodel import PrivateModel
from dpserve.resources.confidential import (
    ConfidentialDecision,
    ConfidentialResolution,
    resolve_confidential,
)
from dpserve.resources.labels import DEFAULT_OPERATOR_POD_LABELS
from dpserve.resources.ledgerhost import is_ip
from dpserve.resources.names import DNS1123_LABEL, validate_model_name
from dpserve.resources.ownership import OwnerInfo
from dpserve.resources.security import FILTER_RESOURCES, ResourceSpec
from dpserve.resources.uris import Location, parse_uri

PullPolicy = Literal["Always", "IfNotPresent", "Never"]
_VERSION = re.compile(r"^v[0-9]+$")


@dataclass(frozen=True)
class BuildContext:
    image: str  # the inference image (model server, filter and trainer)
    ledger_url: str  # e.g. http://dpserve-ledger.dpserve-system.svc:8443
    operator_namespace: str
    model_version: str  # "vN"; status.modelVersion after a retrain
    artifact: str  # artifact URI of that version; status.artifact after a retrain
    budget_name: str  # the PrivacyBudget the current version spends
    replicas: int  # decided by the controller: spec replicas, or 0 when exhausted/blocked
    owner: OwnerInfo
    confidential: ConfidentialResolution
    # The budget's spec.partitions.header; used for laplace-embedding models only.
    partition_header: str | None = None
    operator_pod_labels: Mapping[str, str] = field(
        default_factory=lambda: dict(DEFAULT_OPERATOR_POD_LABELS)
    )
    image_pull_policy: PullPolicy = "IfNotPresent"
    filter_resources: ResourceSpec = FILTER_RESOURCES
    training_resources: ResourceSpec | None = None  # None: the serving resources
    # PEM of the CA that signed the ledger's TLS certificate: written beside filter.json, so
    # the sidecar verifies the ledger (and a rotated CA rolls the pods through the hash).
    ledger_ca_pem: str | None = None
    revision_history_limit: int = 3
    # file:// URIs become hostPath volumes of any host directory: a confused deputy for
    # whoever may create a PrivateModel. Off unless the operator is told otherwise (the
    # demo and single-node development do).
    allow_host_path_artifacts: bool = False
    # Ids in the model's erased-id ConfigMap (0: none): training Jobs mount it and leave
    # them out; the Job's annotation records the count so a roll knows what it removed.
    erased_ids: int = 0
    # The ledger Service's ClusterIPs: the serving pod maps the ledger host name to them
    # (hostAliases), so it needs no DNS. Empty: the host is an address, or DNS is allowed.
    ledger_ips: tuple[str, ...] = ()
    # Whether serving pods may query the cluster DNS (DPSERVE_SERVING_DNS_EGRESS): off
    # unless the ledger URL names a host outside the cluster.
    dns_egress: bool = False

    def __post_init__(self) -> None:
        if not self.image or any(c.isspace() for c in self.image):
            raise ValueError(f"inference image {self.image!r} is not an image reference")
        parts = urlsplit(self.ledger_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"ledger URL {self.ledger_url!r} must be http(s)://host[:port]")
        if not DNS1123_LABEL.match(self.operator_namespace):
            raise ValueError(f"operator namespace {self.operator_namespace!r} is not a name")
        if not _VERSION.match(self.model_version):
            raise ValueError(f"model version {self.model_version!r} must look like v1, v2, ...")
        if self.replicas < 0:
            raise ValueError(f"replicas must be >= 0, got {self.replicas}")
        if self.revision_history_limit < 0:
            raise ValueError("revision_history_limit must be >= 0")
        bad = [ip for ip in self.ledger_ips if not is_ip(ip)]
        if bad:
            raise ValueError(f"ledger addresses {bad!r} are not IP addresses")

    def location(self, uri: str, field: str) -> Location:
        """``uri`` parsed, refused when it is a host path and host paths are off."""
        location = parse_uri(uri, field)
        if location.scheme == "file" and not self.allow_host_path_artifacts:
            raise ValueError(
                f"{field}: {uri!r}: file:// URIs mount a directory of the node (hostPath) and "
                "are off on this operator; use pvc:// or oci://, or start the operator with "
                "DPSERVE_ALLOW_HOST_PATH_ARTIFACTS=true (chart value "
                "allowHostPathArtifacts) for local development only")
        return location

    @property
    def ledger_host(self) -> str:
        return (urlsplit(self.ledger_url).hostname or "").lower()

    @property
    def ledger_port(self) -> int:
        """The ledger's TCP port (egress rule); defaults follow the URL scheme."""
        parts = urlsplit(self.ledger_url)
        if parts.port is not None:
            return parts.port
        return 443 if parts.scheme == "https" else 80


def model_name(model: PrivateModel) -> str:
    name = model.metadata.get("name")
    if not isinstance(name, str):
        raise ValueError("metadata.name: the PrivateModel has no name")
    return validate_model_name(name)


def model_namespace(model: PrivateModel) -> str:
    namespace = model.metadata.get("namespace")
    if not isinstance(namespace, str) or not DNS1123_LABEL.match(namespace):
        raise ValueError("metadata.namespace: the PrivateModel has no valid namespace")
    return namespace


def next_version(version: str) -> str:
    """``v3`` -> ``v4``."""
    if not _VERSION.match(version):
        raise ValueError(f"model version {version!r} must look like v1, v2, ...")
    return f"v{int(version[1:]) + 1}"


def build_context(
    model: PrivateModel,
    *,
    image: str,
    ledger_url: str,
    operator_namespace: str,
    replicas: int,
    decision: ConfidentialDecision | None = None,
    partition_header: str | None = None,
    operator_pod_labels: Mapping[str, str] | None = None,
    image_pull_policy: PullPolicy = "IfNotPresent",
    ledger_ca_pem: str | None = None,
    allow_host_path_artifacts: bool = False,
    erased_ids: int = 0,
    ledger_ips: tuple[str, ...] = (),
    dns_egress: bool = False,
) -> BuildContext:
    """The usual context: version, artifact and budget from status when a retrain set them,
    else from the spec; the confidential placement from the controller's decision."""
    status = model.status
    version = (status.model_version if status else None) or model.spec.model.version
    artifact = (status.artifact if status else None) or model.spec.model.artifact
    budget = (status.budget if status else None) or model.spec.budget_ref.name
    return BuildContext(
        image=image,
        ledger_url=ledger_url,
        operator_namespace=operator_namespace,
        model_version=version,
        artifact=artifact,
        budget_name=budget,
        replicas=replicas,
        owner=OwnerInfo.from_model(model),
        confidential=resolve_confidential(model, decision),
        partition_header=partition_header,
        operator_pod_labels=dict(
            operator_pod_labels if operator_pod_labels is not None else DEFAULT_OPERATOR_POD_LABELS
        ),
        image_pull_policy=image_pull_policy,
        ledger_ca_pem=ledger_ca_pem,
        allow_host_path_artifacts=allow_host_path_artifacts,
        erased_ids=erased_ids,
        ledger_ips=tuple(ledger_ips),
        dns_egress=dns_egress,
    )

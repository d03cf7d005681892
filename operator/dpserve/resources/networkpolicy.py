"""NetworkPolicies: serving pods take traffic on the sidecar port only and talk only to the
ledger (and to the cluster DNS only when the operator is told to allow it); training pods
talk to nothing.

The ledger runs in the operator's pods (``ctx.operator_pod_labels`` in
``ctx.operator_namespace``); namespaces are matched by the immutable
``kubernetes.io/metadata.name`` label the API server sets on every namespace.

No DNS by default: a policy applies to the whole pod, so DNS egress for the sidecar would be
DNS for the model container too, a channel out of the pod (queries for names that encode
data, answered by whoever serves that zone). The sidecar reaches the ledger through the
ledger Service's ClusterIP pinned in the pod's ``hostAliases`` (``resources/ledgerhost.py``);
``ctx.dns_egress`` (``DPSERVE_SERVING_DNS_EGRESS``) adds the DNS rule back for a ledger URL
that names a host outside the cluster. What the policy can and cannot stop:
docs/confidential.md, "Network isolation".
"""

from __future__ import annotations

from typing import Any

from dpserve.api.privatemodel import PrivateModel
from dpserve.resources.context import BuildContext, model_name
from dpserve.resources.labels import INFERENCE, TRAINING, Component, selector_labels
from dpserve.resources.meta import finalize, object_meta
from dpserve.resources.names import (
    FILTER_PORT,
    network_policy_name,
    training_network_policy_name,
)
from dpserve.resources.render import Manifest

COMPONENT: Component = "network"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
DNS_NAMESPACE = "kube-system"
DNS_POD_LABELS = {"k8s-app": "kube-dns"}  # CoreDNS keeps the kube-dns label


def _namespace(name: str) -> dict[str, Any]:
    return {"matchLabels": {NAMESPACE_NAME_LABEL: name}}


def _ledger_egress(ctx: BuildContext) -> dict[str, Any]:
    return {
        "to": [
            {
                "namespaceSelector": _namespace(ctx.operator_namespace),
                "podSelector": {"matchLabels": dict(ctx.operator_pod_labels)},
            }
        ],
        "ports": [{"protocol": "TCP", "port": ctx.ledger_port}],
    }


def _dns_egress() -> dict[str, Any]:
    return {
        "to": [
            {
                "namespaceSelector": _namespace(DNS_NAMESPACE),
                "podSelector": {"matchLabels": dict(DNS_POD_LABELS)},
            }
        ],
        "ports": [
            {"protocol": "UDP", "port": 53},
            {"protocol": "TCP", "port": 53},
        ],
    }


def build_networkpolicy(model: PrivateModel, ctx: BuildContext) -> Manifest:
    name = model_name(model)
    egress = [_ledger_egress(ctx)] + ([_dns_egress()] if ctx.dns_egress else [])
    return finalize(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": object_meta(model, ctx, network_policy_name(name), COMPONENT),
            "spec": {
                "podSelector": {"matchLabels": selector_labels(name, INFERENCE)},
                "policyTypes": ["Ingress", "Egress"],
                # From anywhere, but only to the sidecar: the model port is on localhost.
                "ingress": [{"ports": [{"protocol": "TCP", "port": FILTER_PORT}]}],
                "egress": egress,
            },
        }
    )


def build_training_networkpolicy(model: PrivateModel, ctx: BuildContext) -> Manifest:
    """Deny all traffic to and from the retraining pods: they read the protected dataset
    from a volume and write the artifact to a volume, and need no network at all."""
    name = model_name(model)
    return finalize(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": object_meta(model, ctx, training_network_policy_name(name), COMPONENT),
            "spec": {
                "podSelector": {"matchLabels": selector_labels(name, TRAINING)},
                "policyTypes": ["Ingress", "Egress"],
            },
        }
    )
